// Activation checkpointing of a block: its forward keeps only the block's input, and its
// backward runs the block's forward again with gradient, then back-propagates through that
// copy, trading one more forward per block for the activations inside it. tch cannot
// define autograd functions; this one calls back into Rust for the block's forward.

#include <torch/torch.h>

#include <cstring>
#include <stdexcept>

namespace {

// Runs the block on `input` and returns a tensor made with `new` (tch's ownership), or
// null when the block failed.
using BlockForward = at::Tensor* (*)(void* block, const at::Tensor* input);
using BlockDrop = void (*)(void* block);

// The Rust block, kept alive by the autograd graph until its backward has run or the graph
// is freed.
struct RustBlock : torch::CustomClassHolder {
  void* block;
  BlockForward forward;
  BlockDrop drop;

  RustBlock(void* block, BlockForward forward, BlockDrop drop) : block(block), forward(forward), drop(drop) {}
  ~RustBlock() override { drop(block); }

  at::Tensor run(const at::Tensor& input) const {
    at::Tensor* output = forward(block, &input);
    if (output == nullptr) {
      throw std::runtime_error("the checkpointed block failed");
    }
    at::Tensor result = std::move(*output);
    delete output;
    return result;
  }
};

struct Checkpoint : torch::autograd::Function<Checkpoint> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            c10::intrusive_ptr<RustBlock> block) {
    ctx->save_for_backward({input});
    at::Tensor output = block->run(input);
    ctx->saved_data["block"] = c10::IValue::make_capsule(std::move(block));
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto block = c10::static_intrusive_pointer_cast<RustBlock>(ctx->saved_data["block"].toCapsule());
    at::Tensor input = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    at::Tensor output;
    {
      at::AutoGradMode with_grad(true);
      output = block->run(input);
    }
    // Accumulates into the block's parameters as the uncheckpointed graph would, and into
    // `input`, whose gradient goes on down the outer graph.
    torch::autograd::backward({output}, {grads[0]});
    return {input.grad(), torch::autograd::Variable()};
  }
};

}  // namespace

extern "C" at::Tensor* trainer_checkpoint(const at::Tensor* input, void* block, BlockForward forward, BlockDrop drop,
                                          char** error) {
  // Owned from here on, also when apply throws: the holder's destructor drops the block.
  auto holder = c10::make_intrusive<RustBlock>(block, forward, drop);
  try {
    return new at::Tensor(Checkpoint::apply(*input, std::move(holder)));
  } catch (const std::exception& err) {
    *error = strdup(err.what());
    return nullptr;
  }
}

// Whether autograd records operations here: checkpointing is pointless, and the forward
// must run plainly, under no_grad (evaluation, frozen passes).
extern "C" bool trainer_grad_enabled() { return at::GradMode::is_enabled(); }
