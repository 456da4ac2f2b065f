// What the optimizer's flat buffers need from libtorch that tch does not offer: gradients
// that are views into a buffer (autograd then accumulates each parameter's gradient into
// the buffer in place), and ATen's fused AdamW kernel, one pass over a bucket's four
// buffers instead of a dozen elementwise kernels.

#include <ATen/ATen.h>

#include <cstring>
#include <exception>

extern "C" void trainer_set_grad(at::Tensor* parameter, const at::Tensor* grad) {
  parameter->mutable_grad() = *grad;
}

// One AdamW update (decoupled weight decay) of `weights` at step `step` (counted from 1);
// on failure returns false and sets `error` to a malloc'ed message.
extern "C" bool trainer_fused_adamw(at::Tensor* weights, const at::Tensor* grads, at::Tensor* exp_avg,
                                    at::Tensor* exp_avg_sq, int64_t step, double lr, double beta1, double beta2,
                                    double weight_decay, double eps, char** error) {
  try {
    at::Tensor steps = at::full({}, static_cast<double>(step), weights->options().dtype(at::kFloat));
    at::_fused_adamw_(*weights, *grads, *exp_avg, *exp_avg_sq, {}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
    return true;
  } catch (const std::exception& err) {
    *error = strdup(err.what());
    return false;
  }
}
