#include "retort/distill/distributed.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "retort/model/causal_lm.h"
#include "retort/util/error.h"

#ifdef RETORT_HAVE_GLOO
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(RETORT_CUDA) && defined(USE_C10D_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#endif

namespace retort {

namespace {

int env_int(const char* name, int fallback, int lo, int hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  check(errno == 0 && end && *end == 0 && x >= lo && x <= hi, "distributed: environment variable ", name, "=\"", v,
        "\" is not an integer in [", lo, ", ", hi, "]");
  return int(x);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

DistEnv DistEnv::from_environment() {
  DistEnv e;
  const char* ws = std::getenv("WORLD_SIZE");
  if (!ws || !*ws) return e;
  e.from_env = true;
  e.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 20);
  e.rank = env_int("RANK", -1, 0, e.world_size - 1);
  check(e.rank >= 0, "distributed: WORLD_SIZE=", e.world_size, " is set but RANK is not; a launcher sets both "
        "(torchrun, srun with RANK=$SLURM_PROCID, or `retort distill --nproc N`)");
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0, e.world_size - 1);
  e.local_world_size = env_int("LOCAL_WORLD_SIZE", e.world_size, 1, e.world_size);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  else check(e.world_size == 1, "distributed: WORLD_SIZE=", e.world_size, " but MASTER_ADDR is not set (the host of rank 0)");
  e.master_port = env_int("MASTER_PORT", -1, 1, 65535);
  check(e.master_port > 0 || e.world_size == 1, "distributed: WORLD_SIZE=", e.world_size,
        " but MASTER_PORT is not set (a free TCP port on MASTER_ADDR, e.g. 29500)");
  return e;
}

#ifdef RETORT_HAVE_GLOO

bool distributed_available() { return true; }

struct Distributed::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
};

Distributed::Distributed(const DistEnv& env, const DistOptions& opt, torch::Device device)
    : env_(env), opt_(opt), impl_(std::make_unique<Impl>()) {
  check(env.world_size >= 1 && env.rank >= 0 && env.rank < env.world_size, "distributed: rank ", env.rank,
        " outside world size ", env.world_size);
  check(opt.timeout.count() > 0, "distributed: the collective timeout must be > 0");
  const std::string where = cat(env.master_addr, ":", env.master_port);
  // Rendezvous may wait for ranks still loading models on other machines: at least 5 minutes.
  const auto rdv_timeout = std::max<std::chrono::milliseconds>(opt.timeout, std::chrono::minutes(5));
  try {
    c10d::TCPStoreOptions so;
    so.port = uint16_t(env.master_port);
    so.isServer = env.rank == 0;
    so.numWorkers = env.world_size;
    so.waitWorkers = true;
    so.timeout = rdv_timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    impl_->store = c10::make_intrusive<c10d::PrefixStore>("retort", tcp);
  } catch (const std::exception& e) {
    fail("distributed: rank ", env.rank, " could not ", env.rank == 0 ? "host" : "reach", " the rendezvous store at ",
         where, " (MASTER_ADDR:MASTER_PORT): ", e.what(),
         env.rank == 0 ? ". Is the port already in use? Choose another MASTER_PORT."
                       : ". Is rank 0 running, and is the port open between the machines?");
  }
#if defined(RETORT_CUDA) && defined(USE_C10D_NCCL)
  if (device.is_cuda()) {
    auto o = c10d::ProcessGroupNCCL::Options::create();
    o->timeout = opt.timeout;
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, env.rank, env.world_size, o);
    return;
  }
#endif
  try {
    auto o = c10d::ProcessGroupGloo::Options::create(opt.timeout);
    // As torch.distributed: GLOO_SOCKET_IFNAME=eth0[,eth1] picks interfaces; otherwise the address
    // this host name resolves to (loopback for a MASTER_ADDR on this machine).
    if (const char* ifn = std::getenv("GLOO_SOCKET_IFNAME"); ifn && *ifn) {
      std::stringstream ss(ifn);
      std::string name;
      while (std::getline(ss, name, ','))
        if (!name.empty()) o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
    } else if (env.master_addr == "127.0.0.1" || env.master_addr == "localhost" || env.master_addr == "::1") {
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    o->threads = 2;
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env.rank, env.world_size, o);
  } catch (const std::exception& e) {
    fail("distributed: rank ", env.rank, " could not connect the Gloo process group (", env.world_size,
         " ranks, rendezvous ", where, "): ", e.what(),
         ". On machines with several interfaces set GLOO_SOCKET_IFNAME to the one the ranks share.");
  }
  (void)device;
}

Distributed::~Distributed() = default;

void Distributed::fail_collective(const std::string& what, const std::exception& e) const {
  const auto* ce = dynamic_cast<const c10::Error*>(&e);
  std::string msg = ce ? ce->what_without_backtrace() : e.what();
  if (auto nl = msg.find('\n'); nl != std::string::npos && nl > 0) msg.resize(nl);
  fail("distributed: rank ", env_.rank, " of ", env_.world_size, ": ", what, " failed: ", msg,
       ". Another rank has probably died or stalled (see its log); the collective timeout is ",
       opt_.timeout.count() / 1000.0, " s (--dist-timeout)");
}

void Distributed::broadcast(std::vector<torch::Tensor> tensors, const std::string& what) {
  const double t0 = now_s();
  try {
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      c10d::BroadcastOptions o;
      o.rootRank = 0;
      impl_->pg->broadcast(one, o)->wait();
    }
  } catch (const std::exception& e) {
    fail_collective(what, e);
  }
  comm_seconds_ += now_s() - t0;
}

void Distributed::all_reduce_sum(torch::Tensor t, const std::string& what) {
  const double t0 = now_s();
  try {
    std::vector<at::Tensor> one{t};
    impl_->pg->allreduce(one)->wait();
  } catch (const std::exception& e) {
    fail_collective(what, e);
  }
  comm_seconds_ += now_s() - t0;
}

std::vector<double> Distributed::all_reduce_sum(const std::vector<double>& v, const std::string& what) {
  auto t = torch::tensor(v, torch::kFloat64);
  all_reduce_sum(t, what);
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

void Distributed::sync_with_root(const std::string& what) {
  const std::string key = cat("root-done/", sync_count_++);
  const double t0 = now_s();
  try {
    if (is_root()) {
      impl_->store->set(key, std::vector<uint8_t>{1});
    } else {
      impl_->store->wait({key}, std::chrono::hours(24));
    }
  } catch (const std::exception& e) {
    fail_collective(cat("waiting for rank 0 to finish ", what), e);
  }
  comm_seconds_ += now_s() - t0;
}

double Distributed::take_comm_seconds() {
  const double s = comm_seconds_;
  comm_seconds_ = 0;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Gradient buckets

struct GradReducer::Bucket {
  std::vector<size_t> params;  // indices into params_
  std::vector<int64_t> offsets;
  torch::Tensor flat;          // [Σ numel] float32
  size_t n_ready = 0;
  bool late = false;           // reached by the output head: reduced after backward only
  c10::intrusive_ptr<c10d::Work> work;
};

GradReducer::GradReducer(Distributed& dist, CausalLMImpl& model, const std::vector<torch::Tensor>& params)
    : dist_(dist), params_(params) {
  const size_t n = params_.size();
  bucket_of_.assign(n, 0);
  ready_.assign(n, 0);
  accumulators_.resize(n);
  std::unordered_map<const torch::autograd::Node*, size_t> index_of;
  for (size_t i = 0; i < n; ++i) {
    check(params_[i].requires_grad() && params_[i].is_leaf(), "distributed: parameter ", i, " is not a trainable leaf");
    accumulators_[i] = torch::autograd::impl::grad_accumulator(params_[i]);
    index_of[accumulators_[i].get()] = i;
  }
  // Which parameters the output head reaches: walk lm_logits' graph down to AccumulateGrad nodes.
  std::vector<char> head(n, 0);
  {
    torch::AutoGradMode grad_on(true);
    auto probe = model.lm_logits(torch::zeros({1, model.hparams().n_embd},
                                              torch::TensorOptions().dtype(torch::kFloat32).device(params_[0].device())));
    std::vector<torch::autograd::Node*> stack;
    std::unordered_map<torch::autograd::Node*, char> seen;
    if (probe.grad_fn()) stack.push_back(probe.grad_fn().get());
    while (!stack.empty()) {
      auto* node = stack.back();
      stack.pop_back();
      if (seen[node]++) continue;
      if (auto it = index_of.find(node); it != index_of.end()) head[it->second] = 1;
      for (const auto& e : node->next_edges())
        if (e.function) stack.push_back(e.function.get());
    }
  }
  // Buckets in reverse registration order (backward reaches the last layers first), the head last.
  const int64_t cap = std::max<int64_t>(1, dist_.options().bucket_bytes);
  auto add = [&](bool late) {
    auto b = std::make_unique<Bucket>();
    b->late = late;
    buckets_.push_back(std::move(b));
  };
  add(false);
  int64_t bytes = 0;
  for (size_t k = n; k-- > 0;) {
    if (head[k]) continue;
    const int64_t sz = params_[k].numel() * int64_t(sizeof(float));
    if (!buckets_.back()->params.empty() && bytes + sz > cap) {
      add(false);
      bytes = 0;
    }
    buckets_.back()->params.push_back(k);
    bytes += sz;
  }
  if (buckets_.back()->params.empty()) buckets_.pop_back();
  add(true);
  for (size_t k = n; k-- > 0;)
    if (head[k]) buckets_.back()->params.push_back(k);
  if (buckets_.back()->params.empty()) buckets_.pop_back();
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    auto& b = *buckets_[bi];
    int64_t off = 0;
    for (size_t k : b.params) {
      check(params_[k].scalar_type() == torch::kFloat32, "distributed: gradient buckets hold float32 parameters");
      bucket_of_[k] = bi;
      b.offsets.push_back(off);
      off += params_[k].numel();
    }
    b.flat = torch::zeros({off}, torch::TensorOptions().dtype(torch::kFloat32).device(params_[0].device()));
  }
  // Post-hooks on AccumulateGrad run after the gradient is in .grad (torch DDP's Reducer does this).
  for (size_t i = 0; i < n; ++i) {
    const uintptr_t key = accumulators_[i]->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          if (armed_) mark_ready(i);
          return outputs;
        }));
    hook_keys_.emplace_back(i, key);
  }
}

GradReducer::~GradReducer() {
  for (const auto& [i, key] : hook_keys_) accumulators_[i]->del_post_hook(key);
}

void GradReducer::arm() { armed_ = dist_.options().overlap; }

void GradReducer::mark_ready(size_t i) {
  if (ready_[i]) return;
  ready_[i] = 1;
  auto& b = *buckets_[bucket_of_[i]];
  ++b.n_ready;
  launch_ready_in_order();
}

void GradReducer::launch_ready_in_order() {
  while (next_launch_ < buckets_.size()) {
    auto& b = *buckets_[next_launch_];
    if (b.late || b.n_ready < b.params.size()) return;
    launch(b);
    ++next_launch_;
  }
}

void GradReducer::launch(Bucket& b) {
  const double t0 = now_s();
  torch::NoGradGuard no_grad;
  for (size_t j = 0; j < b.params.size(); ++j) {
    const auto& p = params_[b.params[j]];
    auto dst = b.flat.narrow(0, b.offsets[j], p.numel());
    const auto& g = p.grad();
    if (g.defined())
      dst.copy_(g.reshape({-1}));
    else
      dst.zero_();
  }
  std::vector<at::Tensor> one{b.flat};
  try {
    b.work = dist_.impl().pg->allreduce(one);
  } catch (const std::exception& e) {
    dist_.fail_collective("launching a gradient all-reduce", e);
  }
  dist_.add_comm_seconds(now_s() - t0);
}

void GradReducer::finish(int64_t step) {
  armed_ = false;
  while (next_launch_ < buckets_.size()) launch(*buckets_[next_launch_++]);
  const double t0 = now_s();
  std::string error;
  for (auto& bp : buckets_) {
    try {
      if (bp->work) bp->work->wait();
    } catch (const std::exception& e) {
      const auto* ce = dynamic_cast<const c10::Error*>(&e);
      if (error.empty()) error = ce ? ce->what_without_backtrace() : e.what();
    }
    bp->work.reset();
  }
  dist_.add_comm_seconds(now_s() - t0);
  if (!error.empty())
    dist_.fail_collective(cat("all-reduce of the gradients of step ", step + 1),
                          std::runtime_error(error));
  torch::NoGradGuard no_grad;
  for (auto& bp : buckets_) {
    auto& b = *bp;
    for (size_t j = 0; j < b.params.size(); ++j) {
      auto& p = params_[b.params[j]];
      auto src = b.flat.narrow(0, b.offsets[j], p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(src);
      else
        p.mutable_grad() = src.clone();
    }
    b.n_ready = 0;
  }
  std::fill(ready_.begin(), ready_.end(), 0);
  next_launch_ = 0;
}

#else  // no Gloo headers at build time

bool distributed_available() { return false; }

struct Distributed::Impl {};

[[noreturn]] static void no_gloo() {
  fail("distributed: this build of retort has no c10d Gloo process group: gloo's headers were not found when it "
       "was configured. Install them (Debian: apt-get install libgloo-dev), re-run cmake and rebuild");
}

Distributed::Distributed(const DistEnv& env, const DistOptions& opt, torch::Device) : env_(env), opt_(opt) { no_gloo(); }
Distributed::~Distributed() = default;
void Distributed::fail_collective(const std::string& what, const std::exception& e) const {
  fail("distributed: ", what, ": ", e.what());
}
void Distributed::broadcast(std::vector<torch::Tensor>, const std::string&) { no_gloo(); }
void Distributed::all_reduce_sum(torch::Tensor, const std::string&) { no_gloo(); }
std::vector<double> Distributed::all_reduce_sum(const std::vector<double>&, const std::string&) { no_gloo(); }
void Distributed::sync_with_root(const std::string&) { no_gloo(); }
double Distributed::take_comm_seconds() { return 0; }
struct GradReducer::Bucket {};
GradReducer::GradReducer(Distributed& dist, CausalLMImpl&, const std::vector<torch::Tensor>&) : dist_(dist) {
  no_gloo();
}
GradReducer::~GradReducer() = default;
void GradReducer::arm() {}
void GradReducer::finish(int64_t) { no_gloo(); }
void GradReducer::mark_ready(size_t) {}
void GradReducer::launch_ready_in_order() {}
void GradReducer::launch(Bucket&) {}

#endif

void test_kill_hook(int rank, int64_t step) {
  auto hit = [&](const char* name) {
    const char* v = std::getenv(name);
    int r = -1;
    long long s = -1;
    return v && std::sscanf(v, "%d:%lld", &r, &s) == 2 && r == rank && s == step;
  };
  if (hit("RETORT_TEST_KILL_RANK_AT_STEP")) ::raise(SIGKILL);
  if (hit("RETORT_TEST_STALL_RANK_AT_STEP"))
    for (;;) ::pause();  // alive but silent, as a rank stuck in a hung filesystem or a stopped VM
}

// ---------------------------------------------------------------------------------------------
// `--nproc N`: fork/exec of this program, one process per rank

namespace {

int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  check(fd >= 0, "distill --nproc: socket(): ", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  const int err = errno;
  ::close(fd);
  check(ok, "distill --nproc: could not find a free port on 127.0.0.1: ", std::strerror(err));
  return ntohs(addr.sin_port);
}

std::vector<std::string> own_arguments() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> out;
  size_t a = 0;
  while (a < all.size()) {
    size_t b = all.find('\0', a);
    if (b == std::string::npos) b = all.size();
    out.push_back(all.substr(a, b - a));
    a = b + 1;
  }
  return out;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return cat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return cat("was killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  return cat("ended with wait status ", status);
}

}  // namespace

void launch_local_ranks(int nproc, bool threads_given) {
  check(nproc >= 1, "--nproc must be >= 1, got ", nproc);
  check(distributed_available() || nproc == 1, "distill --nproc ", nproc,
        ": this build has no c10d Gloo process group (install libgloo-dev, re-run cmake, rebuild)");
  const auto args = own_arguments();
  check(!args.empty(), "distill --nproc: could not read /proc/self/cmdline");
  const int port = free_local_port();
  const int threads = std::max(1, int(std::thread::hardware_concurrency()) / nproc);
  std::vector<pid_t> pids(size_t(nproc), -1);
  std::fflush(stdout);
  std::fflush(stderr);
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    check(pid >= 0, "distill --nproc: fork(): ", std::strerror(errno));
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      std::vector<std::string> child = args;
      if (!threads_given) {
        child.push_back("--threads");
        child.push_back(std::to_string(threads));
      }
      std::vector<char*> argv;
      for (auto& s : child) argv.push_back(s.data());
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "distill --nproc: rank %d: execv(/proc/self/exe): %s\n", r, std::strerror(errno));
      ::_exit(127);
    }
    pids[size_t(r)] = pid;
  }
  std::string first_failure, hint;
  // A rank killed from outside is the cause; ranks that then fail on its broken connections are not, and
  // either may be reaped first: the final error names a killed rank when there is one.
  std::string killed_failure;
  bool signalled = false;  // the launcher has sent SIGTERM/SIGKILL (its own kills are not the cause)
  int alive = nproc;
  // After a failure: the others get 5 s to stop on their own (and print their errors), then
  // SIGTERM, then SIGKILL 10 s later.
  double term_at = 0, kill_at = 0;
  while (alive > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, term_at > 0 ? WNOHANG : 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;  // ECHILD: none left
    }
    if (pid == 0) {  // stopping the others
      const double t = now_s();
      const int sig = t > kill_at ? SIGKILL : t > term_at ? SIGTERM : 0;
      if (sig != 0) {
        signalled = true;
        for (pid_t p : pids)
          if (p > 0) ::kill(p, sig);
        if (sig == SIGKILL) kill_at = t + 3600;
        if (sig == SIGTERM) term_at = t + 3600;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    const auto it = std::find(pids.begin(), pids.end(), pid);
    if (it == pids.end()) continue;
    const int r = int(it - pids.begin());
    *it = -1;
    --alive;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (WIFSIGNALED(status) && killed_failure.empty() && !signalled)
      killed_failure = cat("rank ", r, " (pid ", pid, ") ", describe_status(status));
    if (!ok && first_failure.empty()) {
      first_failure = cat("rank ", r, " (pid ", pid, ") ", describe_status(status));
      hint = WIFSIGNALED(status) ? "; it was killed from outside (out of memory? see `dmesg`) and printed no error"
                                 : "; its error is printed above (every rank writes to this terminal)";
      if (alive > 0) {
        std::fprintf(stderr, "distill --nproc %d: %s; stopping the other ranks\n", nproc, first_failure.c_str());
        term_at = now_s() + 5;
        kill_at = term_at + 10;
      }
    }
  }
  if (!killed_failure.empty() && killed_failure != first_failure) {
    first_failure = killed_failure;
    hint = "; it was killed from outside (out of memory? see `dmesg`) and printed no error";
  }
  check(first_failure.empty(), "distill --nproc ", nproc, ": ", first_failure, hint, "; the other ranks were stopped");
}

}  // namespace retort
