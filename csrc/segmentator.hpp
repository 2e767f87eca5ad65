// Felzenszwalb superpoints of meshes and point graphs, reproducing ScanNet's Segmentator (Karbo123/segmentator).
//
// Pure C++ (no Python): the bindings validate inputs and call these functions. Semantics (SPEC section 6):
//   mesh graph   3 edges per face in the order a-b, a-c, c-b; vertex normal = running average of the unit face
//                normals of its faces, in face order, not re-normalised (a degenerate face gives NaN normals).
//   weight       w = 1 - n_a.n_b, squared when n_b . unit(p_b - p_a) > 0 (convex).
//   order        std::sort of the edges in creation order by w ascending, as the original: equal weights end up
//                where the original's unstable sort puts them (same standard library); NaN weights go last.
//   segmentation union-find with rank (on equal rank the second root survives), threshold per root starting at
//                k_thresh; merge when w <= thr[a] and w <= thr[b], then thr[root] = w + k_thresh / |root|.
//   small pass   one pass over the sorted edges merging whenever a side has fewer than min_verts vertices.
//   ids          contiguous from 0, numbered by increasing root vertex index (torch.unique inverse).
// All arithmetic is float32 in the original's operation order; build with -ffp-contract=off so that it stays so.
#pragma once

#include <cstdint>

namespace sas_ray {

// Preconditions, checked by the bindings: arrays C-contiguous, float32 values finite, every index in
// [0, num_vertices), num_vertices and the edge count (3 * num_faces or num_edges) below 2^31.

// Superpoint id of every vertex of a triangle mesh; ids written to out [V].
void segment_mesh(const float* vertices, int64_t num_vertices, const int64_t* faces, int64_t num_faces,
                  float k_thresh, int64_t min_verts, int64_t* out);

// Superpoint id of every vertex of a graph with given normals and edges [E*2]; ids written to out [V].
void segment_graph(const float* vertices, const float* normals, int64_t num_vertices, const int64_t* edges,
                   int64_t num_edges, float k_thresh, int64_t min_verts, int64_t* out);

}  // namespace sas_ray
