// Python module sas_ray._segmentator: checks numpy inputs (never crash on bad ones), then segments without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "segmentator.hpp"

namespace py = pybind11;

namespace {

constexpr int64_t kMaxCount = std::numeric_limits<int32_t>::max();

std::string shape_of(const py::array& array) {
  std::string text = "[";
  for (py::ssize_t d = 0; d < array.ndim(); ++d) text += (d ? "," : "") + std::to_string(array.shape(d));
  return text + "]";
}

// Throws std::invalid_argument (ValueError in Python) unless array is a C-contiguous, aligned [n, columns] of T.
template <typename T>
void require_matrix(const py::array& array, const char* name, const char* dtype, py::ssize_t columns) {
  const bool layout_ok = (array.flags() & py::array::c_style) &&
                         (array.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_);
  if (!array.dtype().is(py::dtype::of<T>()) || array.ndim() != 2 || array.shape(1) != columns || !layout_ok) {
    throw std::invalid_argument(std::string(name) + " must be a C-contiguous " + dtype + " array [N," +
                                std::to_string(columns) + "], got " + py::str(array.dtype()).cast<std::string>() +
                                " " + shape_of(array) + (layout_ok ? "" : " (not C-contiguous/aligned)"));
  }
}

void require_finite(const py::array& array, const char* name) {
  const auto* data = static_cast<const float*>(array.data());
  for (py::ssize_t i = 0; i < array.size(); ++i) {
    if (!std::isfinite(data[i])) throw std::invalid_argument(std::string(name) + " contains NaN or inf");
  }
}

void require_indices(const py::array& array, const char* name, int64_t num_vertices) {
  const auto* data = static_cast<const int64_t*>(array.data());
  for (py::ssize_t i = 0; i < array.size(); ++i) {
    if (data[i] < 0 || data[i] >= num_vertices) {
      throw std::invalid_argument(std::string(name) + " holds vertex index " + std::to_string(data[i]) +
                                  ", outside [0, " + std::to_string(num_vertices) + ")");
    }
  }
}

void require_parameters(double k_thresh, int64_t min_verts) {
  if (!std::isfinite(k_thresh) || k_thresh < 0) throw std::invalid_argument("k_thresh must be finite and >= 0");
  if (min_verts < 0) throw std::invalid_argument("min_verts must be >= 0");
}

void require_count(int64_t count, const char* what) {
  if (count > kMaxCount) throw std::invalid_argument(std::string("too many ") + what + " (at most 2^31 - 1)");
}

py::array_t<int64_t> segment_mesh(const py::array& vertices, const py::array& faces, double k_thresh,
                                  int64_t min_verts) {
  require_matrix<float>(vertices, "vertices", "float32", 3);
  require_matrix<int64_t>(faces, "faces", "int64", 3);
  require_parameters(k_thresh, min_verts);
  const int64_t num_vertices = vertices.shape(0);
  const int64_t num_faces = faces.shape(0);
  require_count(num_vertices, "vertices");
  require_count(3 * num_faces, "edges (3 per face)");
  require_finite(vertices, "vertices");
  require_indices(faces, "faces", num_vertices);
  py::array_t<int64_t> ids(num_vertices);
  const auto* v = static_cast<const float*>(vertices.data());
  const auto* f = static_cast<const int64_t*>(faces.data());
  int64_t* out = ids.mutable_data();
  {
    py::gil_scoped_release release;
    sas_ray::segment_mesh(v, num_vertices, f, num_faces, static_cast<float>(k_thresh), min_verts, out);
  }
  return ids;
}

py::array_t<int64_t> segment_graph(const py::array& vertices, const py::array& normals, const py::array& edges,
                                   double k_thresh, int64_t min_verts) {
  require_matrix<float>(vertices, "vertices", "float32", 3);
  require_matrix<float>(normals, "normals", "float32", 3);
  require_matrix<int64_t>(edges, "edges", "int64", 2);
  require_parameters(k_thresh, min_verts);
  const int64_t num_vertices = vertices.shape(0);
  const int64_t num_edges = edges.shape(0);
  if (normals.shape(0) != num_vertices) {
    throw std::invalid_argument("normals " + shape_of(normals) + " must match vertices " + shape_of(vertices));
  }
  require_count(num_vertices, "vertices");
  require_count(num_edges, "edges");
  require_finite(vertices, "vertices");
  require_finite(normals, "normals");
  require_indices(edges, "edges", num_vertices);
  py::array_t<int64_t> ids(num_vertices);
  const auto* v = static_cast<const float*>(vertices.data());
  const auto* n = static_cast<const float*>(normals.data());
  const auto* e = static_cast<const int64_t*>(edges.data());
  int64_t* out = ids.mutable_data();
  {
    py::gil_scoped_release release;
    sas_ray::segment_graph(v, n, num_vertices, e, num_edges, static_cast<float>(k_thresh), min_verts, out);
  }
  return ids;
}

}  // namespace

PYBIND11_MODULE(_segmentator, m) {
  m.doc() = "ScanNet Segmentator (Felzenszwalb superpoints) for meshes and point graphs; see csrc/segmentator.hpp.";
  m.def("segment_mesh", &segment_mesh, py::arg("vertices"), py::arg("faces"), py::arg("k_thresh") = 0.01,
        py::arg("min_verts") = 20,
        "vertices float32 [V,3], faces int64 [F,3] -> superpoint ids int64 [V], contiguous from 0.");
  m.def("segment_graph", &segment_graph, py::arg("vertices"), py::arg("normals"), py::arg("edges"),
        py::arg("k_thresh") = 0.01, py::arg("min_verts") = 20,
        "vertices, normals float32 [V,3], edges int64 [E,2] -> superpoint ids int64 [V], contiguous from 0.");
  // The standard library whose std::sort orders equal-weight edges (the original's under the same library).
#if defined(__GLIBCXX__)
  m.attr("STANDARD_LIBRARY") = "libstdc++";
#elif defined(_LIBCPP_VERSION)
  m.attr("STANDARD_LIBRARY") = "libc++";
#elif defined(_MSC_VER)
  m.attr("STANDARD_LIBRARY") = "msvc";
#else
  m.attr("STANDARD_LIBRARY") = "unknown";
#endif
}
