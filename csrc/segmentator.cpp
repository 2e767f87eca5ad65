// Felzenszwalb superpoint segmentation, operation for operation as ScanNet's Segmentator (see segmentator.hpp).
#include "segmentator.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace sas_ray {
namespace {

struct Edge {
  int32_t a, b;  // endpoints
  float w;       // weight
};

// Union-find with union by rank, one 16-byte node per vertex (with the Felzenszwalb threshold) for locality.
// Path halving only shortens paths, so roots are the original's.
class Forest {
 public:
  Forest(int32_t n, float threshold) : nodes_(n) {
    for (int32_t i = 0; i < n; ++i) nodes_[i] = {i, 0, 1, threshold};
  }
  int32_t find(int32_t x) {
    while (nodes_[x].parent != x) {
      nodes_[x].parent = nodes_[nodes_[x].parent].parent;
      x = nodes_[x].parent;
    }
    return x;
  }
  // Joins two roots; y survives unless x has the higher rank (the original's rule). Returns the survivor.
  int32_t join(int32_t x, int32_t y) {
    Node& nx = nodes_[x];
    Node& ny = nodes_[y];
    if (nx.rank > ny.rank) {
      ny.parent = x;
      nx.size += ny.size;
      return x;
    }
    nx.parent = y;
    ny.size += nx.size;
    if (nx.rank == ny.rank) ++ny.rank;
    return y;
  }
  int32_t size(int32_t root) const { return nodes_[root].size; }
  float& threshold(int32_t root) { return nodes_[root].threshold; }

 private:
  struct Node {
    int32_t parent, rank, size;
    float threshold;
  };
  std::vector<Node> nodes_;
};

// The original's edge weight, same float operations in the same order.
float edge_weight(const float* vertices, const float* normals, int32_t a, int32_t b) {
  const float* pa = vertices + 3 * static_cast<int64_t>(a);
  const float* pb = vertices + 3 * static_cast<int64_t>(b);
  const float* na = normals + 3 * static_cast<int64_t>(a);
  const float* nb = normals + 3 * static_cast<int64_t>(b);
  float dx = pb[0] - pa[0];
  float dy = pb[1] - pa[1];
  float dz = pb[2] - pa[2];
  const float dd = std::sqrt(dx * dx + dy * dy + dz * dz);
  dx /= dd;
  dy /= dd;
  dz /= dd;
  const float dot = na[0] * nb[0] + na[1] * nb[1] + na[2] * nb[2];
  const float convexity = nb[0] * dx + nb[1] * dy + nb[2] * dz;
  float w = 1.0f - dot;
  if (convexity > 0) w = w * w;  // convex creases matter less
  return w;
}

void set_weights(const float* vertices, const float* normals, std::vector<Edge>& edges) {
  for (Edge& edge : edges) edge.w = edge_weight(vertices, normals, edge.a, edge.b);
}

std::vector<float> mesh_vertex_normals(const float* vertices, int64_t num_vertices, const int64_t* faces,
                                       int64_t num_faces) {
  std::vector<float> normals(3 * num_vertices, 0.0f);
  std::vector<int32_t> counts(num_vertices, 0);
  for (int64_t f = 0; f < num_faces; ++f) {
    const int64_t corner[3] = {faces[3 * f], faces[3 * f + 1], faces[3 * f + 2]};
    const float* p1 = vertices + 3 * corner[0];
    const float* p2 = vertices + 3 * corner[1];
    const float* p3 = vertices + 3 * corner[2];
    const float u[3] = {p2[0] - p1[0], p2[1] - p1[1], p2[2] - p1[2]};
    const float v[3] = {p3[0] - p1[0], p3[1] - p1[1], p3[2] - p1[2]};
    float n[3] = {u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]};
    const float length = std::sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);  // 0 for a degenerate face -> NaN
    n[0] /= length;
    n[1] /= length;
    n[2] /= length;
    for (const int64_t i : corner) {  // lerp(old, n, 1 / (count + 1)); counts rise after all three corners
      const float t = 1.0f / (static_cast<float>(counts[i]) + 1.0f);
      const float s = 1.0f - t;
      float* old = normals.data() + 3 * i;
      old[0] = t * n[0] + s * old[0];
      old[1] = t * n[1] + s * old[1];
      old[2] = t * n[2] + s * old[2];
    }
    for (const int64_t i : corner) ++counts[i];
  }
  return normals;
}

// The original's edge order: std::sort over the edges in creation order, comparing weights with `<` (its
// operator<). std::sort is not stable, but for one standard library, comparator and input its result is fixed, so
// equal weights end up in the original's order (built with the same library: libstdc++ under g++, the compiler the
// original supports). NaN weights (vertices of a zero-area face) make the original's `<` no strict weak order and
// its std::sort's result undefined; there a comparator that puts NaN after every number, and answers every other
// comparison as `<` does, keeps the sort defined.
void sort_like_original(std::vector<Edge>& edges) {
  const bool has_nan = std::any_of(edges.begin(), edges.end(), [](const Edge& e) { return std::isnan(e.w); });
  if (has_nan) {
    std::sort(edges.begin(), edges.end(), [](const Edge& x, const Edge& y) {
      return x.w < y.w || (!std::isnan(x.w) && std::isnan(y.w));
    });
  } else {
    std::sort(edges.begin(), edges.end(), [](const Edge& x, const Edge& y) { return x.w < y.w; });
  }
}

// Felzenszwalb over the sorted edges, the small-segment pass, then ids numbered by increasing root index.
void felzenszwalb(int32_t num_vertices, std::vector<Edge>& edges, float k_thresh, int64_t min_verts, int64_t* out) {
  sort_like_original(edges);
  Forest forest(num_vertices, k_thresh);
  for (const Edge& edge : edges) {
    const int32_t a = forest.find(edge.a);
    const int32_t b = forest.find(edge.b);
    if (a != b && edge.w <= forest.threshold(a) && edge.w <= forest.threshold(b)) {
      const int32_t root = forest.join(a, b);
      forest.threshold(root) = edge.w + k_thresh / static_cast<float>(forest.size(root));
    }
  }
  for (const Edge& edge : edges) {
    const int32_t a = forest.find(edge.a);
    const int32_t b = forest.find(edge.b);
    if (a != b && (forest.size(a) < min_verts || forest.size(b) < min_verts)) forest.join(a, b);
  }
  std::vector<int64_t> id_of_root(num_vertices, 0);
  for (int32_t v = 0; v < num_vertices; ++v) id_of_root[forest.find(v)] = 1;
  int64_t next = 0;
  for (int32_t r = 0; r < num_vertices; ++r) {
    const int64_t present = id_of_root[r];
    id_of_root[r] = next;
    next += present;
  }
  for (int32_t v = 0; v < num_vertices; ++v) out[v] = id_of_root[forest.find(v)];
}

}  // namespace

void segment_mesh(const float* vertices, int64_t num_vertices, const int64_t* faces, int64_t num_faces,
                  float k_thresh, int64_t min_verts, int64_t* out) {
  const std::vector<float> normals = mesh_vertex_normals(vertices, num_vertices, faces, num_faces);
  std::vector<Edge> edges(3 * num_faces);
  for (int64_t f = 0; f < num_faces; ++f) {  // a-b, a-c, c-b
    const auto i1 = static_cast<int32_t>(faces[3 * f]);
    const auto i2 = static_cast<int32_t>(faces[3 * f + 1]);
    const auto i3 = static_cast<int32_t>(faces[3 * f + 2]);
    edges[3 * f] = {i1, i2, 0.0f};
    edges[3 * f + 1] = {i1, i3, 0.0f};
    edges[3 * f + 2] = {i3, i2, 0.0f};
  }
  set_weights(vertices, normals.data(), edges);
  felzenszwalb(static_cast<int32_t>(num_vertices), edges, k_thresh, min_verts, out);
}

void segment_graph(const float* vertices, const float* normals, int64_t num_vertices, const int64_t* edges,
                   int64_t num_edges, float k_thresh, int64_t min_verts, int64_t* out) {
  std::vector<Edge> graph(num_edges);
  for (int64_t e = 0; e < num_edges; ++e) {
    graph[e] = {static_cast<int32_t>(edges[2 * e]), static_cast<int32_t>(edges[2 * e + 1]), 0.0f};
  }
  set_weights(vertices, normals, graph);
  felzenszwalb(static_cast<int32_t>(num_vertices), graph, k_thresh, min_verts, out);
}

}  // namespace sas_ray
