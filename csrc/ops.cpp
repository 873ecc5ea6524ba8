// Schemas of the private kernel operators and the Python module stub of semiseg_fast._C.
// The public ops are defined in Python (semiseg_fast/ops/) with torch.library.custom_op,
// which owns argument checking, autograd, fake tensors and the choice of backend.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/buffer_pool.h"

namespace ssf {
std::string kernel_isa(const std::string& requested);
std::vector<std::string> kernel_isas();
}

TORCH_LIBRARY_FRAGMENT(semiseg_fast, m) {
  m.def("_cpp_kernel_isa(str requested) -> str", &ssf::kernel_isa);
  m.def("_cpp_kernel_isas() -> str[]", &ssf::kernel_isas);
  m.def("_cpp_cache_empty() -> ()", &ssf::pool_empty_cache);
  m.def("_cpp_cache_bytes() -> int", &ssf::pool_cached_bytes);
  m.def("_cpp_cache_limit() -> int", &ssf::pool_limit_bytes);
  m.def("_cpp_cache_set_limit(int limit_bytes) -> ()", &ssf::pool_set_limit_bytes);
  m.def("_cpp_pixel_stats(Tensor logits, float temperature, int[]? size, bool align_corners) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_cpp_pixel_stats_backward(Tensor logits, Tensor confidence, Tensor label, Tensor entropy, Tensor? grad_conf, "
      "Tensor? grad_ent, float temperature, int[]? size, bool align_corners) -> Tensor");
  m.def(
      "_cpp_cross_entropy(Tensor logits, Tensor target, Tensor? weight, int ignore_index, int reduction, "
      "int norm_mode, float norm_value, bool need_grad, bool need_ce, int[]? size, bool align_corners) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("_cpp_scaled_grad(Tensor grad, Tensor scale, ScalarType dtype) -> Tensor");
  m.def("_cpp_negative_mask(Tensor logits, int low_rank, int high_rank) -> Tensor");
  m.def("_cpp_percentile(Tensor values, Tensor? valid, float[] q) -> Tensor");
  m.def("_cpp_select_rank(Tensor values, int rank) -> Tensor");
  m.def(
      "_cpp_fixmatch(Tensor student, Tensor teacher, float threshold, Tensor? ignore_mask, int ignore_index, "
      "int norm_mode, float norm_value, bool need_grad, int[]? size, bool align_corners) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_cpp_cps(Tensor logits_a, Tensor logits_b, Tensor? ignore_mask, int ignore_index, float threshold, "
      "int norm_mode, float norm_value, Tensor? label_a, Tensor? conf_a, Tensor? label_b, Tensor? conf_b, "
      "bool need_grad_a, bool need_grad_b, int[]? size, bool align_corners) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_cpp_photometric(Tensor target, Tensor warped, Tensor? identity, float ssim_weight, bool need_grad) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("_cpp_pseudoseg_scale(Tensor decoder, Tensor sgc, int[]? size, bool align_corners) -> Tensor");
  m.def("_cpp_feature_rows(Tensor features) -> Tensor");
  m.def(
      "_cpp_newest_negatives(Tensor prob, Tensor label, Tensor unreliable, Tensor labeled, int low_rank, "
      "int high_rank, float threshold, int limit, bool quirks) -> (Tensor, Tensor)");
  m.def("_cpp_pixel_rows(Tensor features, Tensor pixels) -> Tensor");
  m.def("_cpp_pixel_rows_backward(Tensor grad_rows, Tensor pixels, int[] sizes) -> Tensor");
  m.def(
      "_cpp_infonce(Tensor anchors, Tensor positive, Tensor keys, Tensor rows, Tensor weight, float temperature, "
      "bool need_grad) -> (Tensor, Tensor)");
  m.def(
      "_cpp_pseudoseg(Tensor student, Tensor decoder, Tensor sgc, Tensor? ignore_mask, Tensor scale, float gamma, "
      "float temperature, float threshold, bool soft, int norm_mode, float norm_value, bool need_grad, int[]? size, "
      "bool align_corners) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "semiseg_fast CPU kernels (operators live in torch.ops)",
                            -1, nullptr};
  return PyModule_Create(&def);
}
