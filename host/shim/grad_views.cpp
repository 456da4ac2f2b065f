// Gradients that are views into a flat buffer, for the optimizer's buckets: autograd then
// accumulates each parameter's gradient into the buffer in place. tch cannot assign a
// gradient; this is the one call it lacks.

#include <ATen/ATen.h>

extern "C" void trainer_set_grad(at::Tensor* parameter, const at::Tensor* grad) {
  parameter->mutable_grad() = *grad;
}
