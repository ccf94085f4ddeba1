// The Python module `fastsparse.compute.kernels()` loads: the names of its `_KERNEL_NAMES`, one function each.
#include <torch/python.h>   // pybind11 and torch's type casters: the Python half of torch/extension.h, none of its C++ frontend
#include "fastsparse.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spmm", torch::wrap_pybind_function(spmm), "spmm");
  m.def("sddmm", torch::wrap_pybind_function(sddmm), "sddmm");
  m.def("csr_transpose", torch::wrap_pybind_function(csr_transpose), "csr_transpose");
  m.def("relayout", torch::wrap_pybind_function(relayout), "relayout");
  m.def("above", torch::wrap_pybind_function(above), "above");
  m.def("top_k", torch::wrap_pybind_function(top_k), "top_k");
  m.def("move", torch::wrap_pybind_function(move), "move");
  m.def("flat", torch::wrap_pybind_function(flat), "flat");
  m.def("grad_at", torch::wrap_pybind_function(grad_at), "grad_at");
  m.def("grad_above", torch::wrap_pybind_function(grad_above), "grad_above");
  m.def("transpose_values", torch::wrap_pybind_function(transpose_values), "transpose_values");
  m.def("densify", torch::wrap_pybind_function(densify), "densify");
  m.def("linear_fwd", torch::wrap_pybind_function(linear_fwd), "linear_fwd");
  m.def("linear_bwd", torch::wrap_pybind_function(linear_bwd), "linear_bwd");
  m.def("to_panels", torch::wrap_pybind_function(to_panels), "to_panels");
  m.def("from_panels", torch::wrap_pybind_function(from_panels), "from_panels");
  m.def("to_chwn", torch::wrap_pybind_function(to_chwn), "to_chwn");
  m.def("from_chwn", torch::wrap_pybind_function(from_chwn), "from_chwn");
  m.def("conv_fwd", torch::wrap_pybind_function(conv_fwd), "conv_fwd");
  m.def("conv_bwd_input", torch::wrap_pybind_function(conv_bwd_input), "conv_bwd_input");
  m.def("conv_bwd_values", torch::wrap_pybind_function(conv_bwd_values), "conv_bwd_values");
  m.def("zero_inactive", torch::wrap_pybind_function(zero_inactive), "zero_inactive");
  m.def("split_inactive", torch::wrap_pybind_function(split_inactive), "split_inactive");
  m.def("or_count", torch::wrap_pybind_function(or_count), "or_count");
}
