// The data-parallel collectives of the trainer, over PyTorch's own c10d: a TCPStore for the
// rendezvous (the one torchrun's agent serves, or one of our own on rank 0) and a process
// group for the collectives, Gloo for CPU tensors or NCCL for CUDA ones, behind a C API the
// Rust side binds to. NCCL is compiled in only where the torch has CUDA (TRAINER_NCCL).
//
// Every C++ exception stops at this boundary: a function that can fail returns a status (or
// NULL) and hands its message to the caller, who frees it with trainer_dist_free_error.

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef TRAINER_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

struct trainer_dist_group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

namespace {

char* copy_message(const char* message) {
  size_t length = std::strlen(message);
  char* copy = static_cast<char*>(std::malloc(length + 1));
  if (copy != nullptr) {
    std::memcpy(copy, message, length + 1);
  }
  return copy;
}

// Runs `body`, turning any exception into a message for the caller; returns whether it ran.
template <typename Body>
bool guarded(char** error, Body body) {
  try {
    body();
    return true;
  } catch (const c10::Error& err) {
    // what() carries a C++ backtrace; the message alone is what a user can act on.
    *error = copy_message(err.what_without_backtrace());
  } catch (const std::exception& err) {
    *error = copy_message(err.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return false;
}

// Gloo's pairs listen on `GLOO_SOCKET_IFNAME` when set, on the loopback address when every
// rank is on this machine, and otherwise on the address this host's name resolves to.
c10::intrusive_ptr<c10d::Backend> gloo_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                       int world_size, std::chrono::milliseconds timeout, bool loopback) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
  options->devices.push_back(interface != nullptr && *interface != '\0'
                                 ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
                             : loopback ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                        : c10d::ProcessGroupGloo::createDefaultDevice());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
}

c10::intrusive_ptr<c10d::Backend> nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                       int world_size, std::chrono::milliseconds timeout) {
#ifdef TRAINER_NCCL
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options);
#else
  (void)store, (void)rank, (void)world_size, (void)timeout;
  throw std::runtime_error(
      "this trainer was built without NCCL (against a torch without CUDA); run on --device cpu");
#endif
}

}  // namespace

extern "C" {

// A process group of `world_size` ranks meeting at master_addr:master_port, over NCCL (CUDA
// tensors) when `use_nccl`, Gloo (CPU tensors) otherwise. Rank 0 serves the store unless
// `agent_store` (torchrun's agent already serves it at that address); it serves it on
// `listen_fd`, a socket already listening that the store takes over, when that is not -1
// (c10d's own server would listen on every interface). `loopback`: every rank is on this
// machine, and Gloo keeps to the loopback interface.
trainer_dist_group* trainer_dist_group_new(const char* master_addr, uint16_t master_port, int rank,
                                           int world_size, bool agent_store, int64_t timeout_ms,
                                           bool use_nccl, int listen_fd, bool loopback, char** error) {
  trainer_dist_group* group = nullptr;
  // c10d logs every failed connection attempt, with a C++ backtrace, while it retries; the
  // error the caller gets says it once. TORCH_CPP_LOG_LEVEL, when set, still decides.
  int log_level = FLAGS_caffe2_log_level;
  if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr) {
    FLAGS_caffe2_log_level = 3;  // FATAL only
  }
  guarded(error, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions store_options;
    store_options.port = master_port;
    store_options.isServer = rank == 0 && !agent_store;
    store_options.numWorkers = world_size;
    store_options.waitWorkers = !agent_store;
    store_options.timeout = timeout;
    if (listen_fd >= 0) {
      store_options.masterListenFd = listen_fd;
    }
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), store_options);
    // Our own namespace in a store torchrun's agent may share with others.
    auto store = c10::make_intrusive<c10d::PrefixStore>("trainer", tcp);
    auto backend = use_nccl ? nccl_backend(store, rank, world_size, timeout)
                            : gloo_backend(store, rank, world_size, timeout, loopback);
    group = new trainer_dist_group{store, backend};
  });
  FLAGS_caffe2_log_level = log_level;
  return group;
}

void trainer_dist_group_free(trainer_dist_group* group) { delete group; }

void trainer_dist_free_error(char* error) { std::free(error); }

// Sums `tensor` over the ranks, in place.
bool trainer_dist_all_reduce_sum(trainer_dist_group* group, at::Tensor* tensor, char** error) {
  return guarded(error, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    group->backend->allreduce(tensors, options)->wait();
  });
}

// Every rank's `tensor` (the same shape on each), concatenated along dim 0 in rank order.
at::Tensor* trainer_dist_all_gather(trainer_dist_group* group, const at::Tensor* tensor, char** error) {
  at::Tensor* gathered = nullptr;
  guarded(error, [&] {
    at::Tensor input = tensor->contiguous();
    std::vector<at::Tensor> inputs{input};
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int rank = 0; rank < group->backend->getSize(); ++rank) {
      outputs[0].push_back(at::empty_like(input));
    }
    group->backend->allgather(outputs, inputs)->wait();
    gathered = new at::Tensor(at::cat(outputs[0], 0));
  });
  return gathered;
}

// `root`'s `tensor` on every rank, in place.
bool trainer_dist_broadcast(trainer_dist_group* group, at::Tensor* tensor, int root, char** error) {
  return guarded(error, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    group->backend->broadcast(tensors, options)->wait();
  });
}

}  // extern "C"
