// retort demo — the whole story in one command: a provider serves the default teacher, a distiller harvests
// it through the API, the crawl monitor flags it, the distiller trains a student, and an audit proves where
// the student came from (scripts/demo.py drives the real subcommands on loopback; see its header).
//
// The driver is a script because the story is glue between processes: it starts `retort serve`, replays the
// shipped benign users through the official `openai` client (which setup installs), and runs `retort capture`,
// `distill`, `audit` and `monitor` as a user would. This command finds it and hands it the arguments.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/common.h"
#include "retort/util/error.h"

namespace retort::cli {

namespace {

namespace fs = std::filesystem;

struct DemoArgs {
  std::string out, teacher, control_model;
  bool fast = false, fresh = false, mini = false;
  int threads = 0, student_layers = 0;
};

// scripts/demo.py: $RETORT_DEMO_SCRIPT, else beside the build directory this binary lives in, else the source
// tree this binary was built from.
fs::path demo_script(const fs::path& self) {
  if (const char* env = std::getenv("RETORT_DEMO_SCRIPT"); env && *env) return env;
  std::vector<fs::path> tried = {self.parent_path().parent_path() / "scripts" / "demo.py"};
#ifdef RETORT_SOURCE_DIR
  tried.push_back(fs::path(RETORT_SOURCE_DIR) / "scripts" / "demo.py");
#endif
  for (const auto& p : tried)
    if (fs::exists(p)) return p;
  throw Error(cat("demo: scripts/demo.py not found (looked at ", tried[0].string(),
                  tried.size() > 1 ? " and " + tried[1].string() : std::string(),
                  "); run retort from its build directory in the source tree, or set RETORT_DEMO_SCRIPT"));
}

[[noreturn]] void run_demo(const DemoArgs& a) {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  check(!ec, "demo: cannot find this program's path (/proc/self/exe): ", ec.message());
  const fs::path script = demo_script(self);
  std::vector<std::string> args = {"python3", script.string(), "--retort", self.string()};
  if (!a.out.empty()) args.insert(args.end(), {"--out", a.out});
  if (a.fast) args.push_back("--fast");
  if (a.fresh) args.push_back("--fresh");
  if (a.mini) args.push_back("--mini");
  if (a.threads > 0) args.insert(args.end(), {"--threads", std::to_string(a.threads)});
  if (!a.teacher.empty()) args.insert(args.end(), {"--teacher", a.teacher});
  if (!a.control_model.empty()) args.insert(args.end(), {"--control-model", a.control_model});
  if (a.student_layers > 0) args.insert(args.end(), {"--student-layers", std::to_string(a.student_layers)});
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  ::execvp("python3", argv.data());
  throw Error(cat("demo: could not start python3 (", std::strerror(errno), "); scripts/setup.sh installs it"));
}

}  // namespace

void register_demo(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  CLI::App* sub = app.add_subcommand(
      "demo", "the whole story on loopback: serve the teacher with watermarks and the crawl monitor, let a "
              "distiller harvest it, distil its student, audit it, write the case file");
  sub->add_option("--out", a->out, "work directory (default $RETORT_HOME/runs/demo, or runs/demo-fast)");
  sub->add_flag("--fast", a->fast, "a smaller harvest and students: about 10 minutes on 2 cores");
  sub->add_flag("--fresh", a->fresh, "start over (default: resume what --out holds)");
  sub->add_option("--threads", a->threads, "CPU threads per model (0 = all cores)");
  sub->add_option("--teacher", a->teacher, "the served model (default smollm2-135m-instruct)");
  sub->add_option("--control-model", a->control_model, "an unrelated model, the audit's control (default gemma3-270m)");
  sub->add_option("--student-layers", a->student_layers, "layers the students keep of the teacher's (default 20)");
  sub->add_flag("--mini", a->mini, "tests: the chain in miniature (tiny settings)")->group("");
  sub->callback([a] { run_demo(*a); });
}

}  // namespace retort::cli
