// retort/distill/distributed.h — data-parallel training on PyTorch's own c10d (no home-made transport).
//
// Rendezvous: a c10d::TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 hosts it), from the environment
// torchrun and cluster schedulers set: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT. Process group: c10d::ProcessGroupGloo on CPU (TCP; interfaces from GLOO_SOCKET_IFNAME,
// comma-separated, as torch.distributed reads it); c10d::ProcessGroupNCCL for CUDA devices in a
// RETORT_CUDA build whose libtorch has NCCL. Every collective and every wait on rank 0 fails with
// retort::Error naming this rank and what it was doing after `timeout` (or at once when a peer's
// connection closes), so a killed rank stops the others instead of hanging them.
//
// Gradients (GradReducer): parameters are cut into buckets of ~bucket_bytes in reverse registration
// order (the order backward reaches them, as torch DDP does) and each bucket is all-reduced (sum) as
// one flat float32 tensor. With overlap, a post-hook on each parameter's AccumulateGrad node (the
// hook torch DDP's Reducer uses) marks the parameter ready in the step's last backward pass and a
// bucket is launched asynchronously as soon as all its parameters are ready, while backward goes on;
// launches follow bucket order on every rank, so the collectives match. Parameters that the output
// head reaches (lm_logits: final norm, head, a tied embedding) receive one gradient per loss chunk
// (losses.h runs the head in row chunks, one backward each), so they are never final before the end
// and go in a last bucket reduced after backward.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace retort {

class CausalLMImpl;

// True when this build has c10d's Gloo process group (libtorch built with it + gloo's headers).
bool distributed_available();

struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool from_env = false;  // RANK/WORLD_SIZE were set (started by a launcher)
  // RANK, WORLD_SIZE, ... ; WORLD_SIZE unset -> a single process. Bad values -> retort::Error.
  static DistEnv from_environment();
};

struct DistOptions {
  std::chrono::milliseconds timeout{60000};  // per collective / wait (Gloo's timeout)
  int64_t bucket_bytes = 25 << 20;           // gradient bucket size (torch DDP's default 25 MiB)
  bool overlap = true;                       // all-reduce buckets during backward
};

class Distributed {
 public:
  Distributed(const DistEnv& env, const DistOptions& opt, torch::Device device);
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  bool is_root() const { return env_.rank == 0; }
  const DistEnv& env() const { return env_; }
  const DistOptions& options() const { return opt_; }

  // In place, from rank 0, one collective per tensor. `what` names it in errors.
  void broadcast(std::vector<torch::Tensor> tensors, const std::string& what);
  // In place sum over ranks.
  void all_reduce_sum(torch::Tensor t, const std::string& what);
  std::vector<double> all_reduce_sum(const std::vector<double>& v, const std::string& what);
  // Rank 0 did something alone (checkpoint, eval, report): the others wait for it here, without the
  // collective timeout (it may take minutes), failing at once if rank 0 dies (the store closes).
  void sync_with_root(const std::string& what);

  // Seconds spent blocked in communication since the last call (then reset).
  double take_comm_seconds();

  // Internals for GradReducer.
  struct Impl;
  Impl& impl() { return *impl_; }
  void add_comm_seconds(double s) { comm_seconds_ += s; }
  [[noreturn]] void fail_collective(const std::string& what, const std::exception& e) const;

 private:
  DistEnv env_;
  DistOptions opt_;
  std::unique_ptr<Impl> impl_;
  int64_t sync_count_ = 0;
  double comm_seconds_ = 0;
};

class GradReducer {
 public:
  // params: the trained parameters (float32, requires_grad), in registration order.
  GradReducer(Distributed& dist, CausalLMImpl& model, const std::vector<torch::Tensor>& params);
  ~GradReducer();
  // The next backward pass is the step's last one for this rank: launch buckets as they become ready.
  void arm();
  // Launch what is left, wait, and write the sums over ranks back into every parameter's .grad
  // (a parameter without a gradient on a rank contributes zeros). Call once per step, on every rank.
  void finish(int64_t step);

 private:
  struct Bucket;
  void mark_ready(size_t param);
  void launch_ready_in_order();
  void launch(Bucket& b);

  Distributed& dist_;
  std::vector<torch::Tensor> params_;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::vector<size_t> bucket_of_;  // param -> bucket
  std::vector<char> ready_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
  std::vector<std::pair<size_t, uintptr_t>> hook_keys_;
  size_t next_launch_ = 0;
  bool armed_ = false;
};

// Test hooks: RETORT_TEST_KILL_RANK_AT_STEP="R:S" makes rank R SIGKILL itself as step S (0-based)
// starts; RETORT_TEST_STALL_RANK_AT_STEP="R:S" makes it stop there forever (until killed).
void test_kill_hook(int rank, int64_t step);

// `retort distill --nproc N`: starts N copies of this process (/proc/self/exe with the same
// arguments) with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free
// MASTER_PORT set, plus `--threads max(1, cores / N)` when `threads_given` is false. Waits for all;
// when one fails (non-zero exit or signal) the others get SIGTERM (SIGKILL after 10 s) and
// retort::Error says which rank failed and how. Returns when all exited with 0.
void launch_local_ranks(int nproc, bool threads_given);

}  // namespace retort
