// Felzenszwalb superpoint segmentation, operation for operation as ScanNet's Segmentator (see segmentator.hpp).
#include "segmentator.hpp"

#include <array>
#include <cmath>
#include <cstring>
#include <vector>

namespace sas_ray {
namespace {

struct Graph {
  std::vector<int32_t> a, b;  // endpoints of each edge
  std::vector<float> w;       // weight of each edge
};

// Union-find with union by rank; path halving only shortens paths, so roots are the original's.
class DisjointSets {
 public:
  explicit DisjointSets(int32_t n) : parent_(n), rank_(n, 0), size_(n, 1) {
    for (int32_t i = 0; i < n; ++i) parent_[i] = i;
  }
  int32_t find(int32_t x) {
    while (parent_[x] != x) {
      parent_[x] = parent_[parent_[x]];
      x = parent_[x];
    }
    return x;
  }
  // Joins two roots; y survives unless x has the higher rank (the original's rule). Returns the survivor.
  int32_t join(int32_t x, int32_t y) {
    if (rank_[x] > rank_[y]) {
      parent_[y] = x;
      size_[x] += size_[y];
      return x;
    }
    parent_[x] = y;
    size_[y] += size_[x];
    if (rank_[x] == rank_[y]) ++rank_[y];
    return y;
  }
  int32_t size(int32_t root) const { return size_[root]; }

 private:
  std::vector<int32_t> parent_, rank_, size_;
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

void set_weights(const float* vertices, const float* normals, Graph& graph) {
  graph.w.resize(graph.a.size());
  for (size_t i = 0; i < graph.a.size(); ++i) graph.w[i] = edge_weight(vertices, normals, graph.a[i], graph.b[i]);
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

// Sort key whose unsigned order is the float order, with -0 == +0 and every NaN after +inf.
uint32_t weight_key(float w) {
  if (std::isnan(w)) return 0xFFFFFFFFu;
  if (w == 0.0f) w = 0.0f;  // -0 -> +0
  uint32_t bits;
  std::memcpy(&bits, &w, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Edge indices by ascending weight, ties in index order: a stable LSD radix sort (11 + 11 + 10 bits).
std::vector<uint32_t> stable_weight_order(const std::vector<float>& weights) {
  const size_t n = weights.size();
  std::vector<uint32_t> keys(n), order(n), keys_tmp(n), order_tmp(n);
  constexpr int kShift[3] = {0, 11, 22};
  std::array<std::vector<size_t>, 3> counts;
  for (auto& c : counts) c.assign(2049, 0);
  for (size_t i = 0; i < n; ++i) {
    keys[i] = weight_key(weights[i]);
    order[i] = static_cast<uint32_t>(i);
    for (int d = 0; d < 3; ++d) ++counts[d][((keys[i] >> kShift[d]) & 0x7FFu) + 1];
  }
  for (int d = 0; d < 3; ++d) {
    auto& start = counts[d];
    bool one_bucket = false;
    for (size_t digit = 1; digit <= 2048; ++digit) one_bucket |= (start[digit] == n);
    if (one_bucket) continue;  // every key has this digit: the pass would not move anything
    for (size_t digit = 1; digit <= 2048; ++digit) start[digit] += start[digit - 1];
    for (size_t i = 0; i < n; ++i) {
      const size_t slot = start[(keys[i] >> kShift[d]) & 0x7FFu]++;
      keys_tmp[slot] = keys[i];
      order_tmp[slot] = order[i];
    }
    keys.swap(keys_tmp);
    order.swap(order_tmp);
  }
  return order;
}

// Felzenszwalb over sorted edges, the small-segment pass, then ids numbered by increasing root index.
void felzenszwalb(int32_t num_vertices, const Graph& graph, float k_thresh, int64_t min_verts, int64_t* out) {
  const std::vector<uint32_t> order = stable_weight_order(graph.w);
  DisjointSets sets(num_vertices);
  std::vector<float> threshold(num_vertices, k_thresh);
  for (const uint32_t e : order) {
    const float w = graph.w[e];
    const int32_t a = sets.find(graph.a[e]);
    const int32_t b = sets.find(graph.b[e]);
    if (a != b && w <= threshold[a] && w <= threshold[b]) {
      const int32_t root = sets.join(a, b);
      threshold[root] = w + k_thresh / static_cast<float>(sets.size(root));
    }
  }
  for (const uint32_t e : order) {
    const int32_t a = sets.find(graph.a[e]);
    const int32_t b = sets.find(graph.b[e]);
    if (a != b && (sets.size(a) < min_verts || sets.size(b) < min_verts)) sets.join(a, b);
  }
  std::vector<int64_t> id_of_root(num_vertices, 0);
  for (int32_t v = 0; v < num_vertices; ++v) id_of_root[sets.find(v)] = 1;
  int64_t next = 0;
  for (int32_t r = 0; r < num_vertices; ++r) {
    const int64_t present = id_of_root[r];
    id_of_root[r] = next;
    next += present;
  }
  for (int32_t v = 0; v < num_vertices; ++v) out[v] = id_of_root[sets.find(v)];
}

}  // namespace

void segment_mesh(const float* vertices, int64_t num_vertices, const int64_t* faces, int64_t num_faces,
                  float k_thresh, int64_t min_verts, int64_t* out) {
  const std::vector<float> normals = mesh_vertex_normals(vertices, num_vertices, faces, num_faces);
  Graph graph;
  graph.a.resize(3 * num_faces);
  graph.b.resize(3 * num_faces);
  for (int64_t f = 0; f < num_faces; ++f) {  // a-b, a-c, c-b
    const auto i1 = static_cast<int32_t>(faces[3 * f]);
    const auto i2 = static_cast<int32_t>(faces[3 * f + 1]);
    const auto i3 = static_cast<int32_t>(faces[3 * f + 2]);
    graph.a[3 * f] = i1, graph.b[3 * f] = i2;
    graph.a[3 * f + 1] = i1, graph.b[3 * f + 1] = i3;
    graph.a[3 * f + 2] = i3, graph.b[3 * f + 2] = i2;
  }
  set_weights(vertices, normals.data(), graph);
  felzenszwalb(static_cast<int32_t>(num_vertices), graph, k_thresh, min_verts, out);
}

void segment_graph(const float* vertices, const float* normals, int64_t num_vertices, const int64_t* edges,
                   int64_t num_edges, float k_thresh, int64_t min_verts, int64_t* out) {
  Graph graph;
  graph.a.resize(num_edges);
  graph.b.resize(num_edges);
  for (int64_t e = 0; e < num_edges; ++e) {
    graph.a[e] = static_cast<int32_t>(edges[2 * e]);
    graph.b[e] = static_cast<int32_t>(edges[2 * e + 1]);
  }
  set_weights(vertices, normals, graph);
  felzenszwalb(static_cast<int32_t>(num_vertices), graph, k_thresh, min_verts, out);
}

}  // namespace sas_ray
