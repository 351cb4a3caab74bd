// A child process for the end-to-end tests: started in its own process group, stdout through a
// pipe (or into the log), stderr into a log file; killed with all its descendants (mpirun puts
// its ranks in process groups of their own) when the object goes, whatever happens.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace shardlm::e2e {

// The whole of a (log) file; "" when it cannot be read.
inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// What `cmd` (run by /bin/sh) writes to stdout; "" when it cannot be started.
inline std::string Shell(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  while (p != nullptr && fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  if (p != nullptr) pclose(p);
  return out;
}

// Every process below `root`, from /proc/*/stat's parent ids.
inline std::vector<pid_t> Descendants(pid_t root) {
  namespace fs = std::filesystem;
  std::map<pid_t, std::vector<pid_t>> children;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state;
    pid_t ppid;
    if (rest >> state >> ppid) children[ppid].push_back(std::stoi(name));
  }
  std::vector<pid_t> out, todo = {root};
  while (!todo.empty()) {
    const pid_t p = todo.back();
    todo.pop_back();
    for (pid_t c : children[p]) {
      out.push_back(c);
      todo.push_back(c);
    }
  }
  return out;
}

// The shardlm-worker processes below `root` (the ranks of the job mpirun `root` runs), by pid.
inline std::vector<pid_t> WorkerRanks(pid_t root) {
  std::vector<pid_t> ranks;
  for (pid_t p : Descendants(root)) {
    std::ifstream comm("/proc/" + std::to_string(p) + "/comm");
    std::string name;
    if (std::getline(comm, name) && name == "shardlm-worker") ranks.push_back(p);
  }
  return ranks;
}

class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& log, bool pipe_stdout) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    int fds[2] = {-1, -1};
    if (pipe_stdout) {
      if (pipe(fds) != 0) throw std::runtime_error("pipe");
      posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
      posix_spawn_file_actions_addclose(&actions, fds[0]);
    } else {
      posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                       0644);
    }
    posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &actions, &attr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (pipe_stdout) {
      close(fds[1]);
      out_ = fdopen(fds[0], "r");
    }
  }
  ~Child() { Kill(SIGKILL); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  bool ok() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }  // -1 once reaped
  // The next stdout line ("" at EOF).
  std::string ReadLine() {
    char buf[4096];
    if (out_ == nullptr || fgets(buf, sizeof(buf), out_) == nullptr) return "";
    return buf;
  }
  // The exit code once the child has exited within `timeout` (a signal: 128 + its number);
  // nullopt while it runs.
  std::optional<int> Wait(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return exit_code_;
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (true) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        kill(-pid_, SIGKILL);  // anything the child left in its group
        pid_ = -1;
        if (out_ != nullptr) fclose(out_);
        out_ = nullptr;
        return exit_code_;
      }
      if (std::chrono::steady_clock::now() >= end) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  // Signals every descendant first, then the child's process group; SIGKILL and SIGTERM also
  // reap the child.
  void Kill(int sig) {
    if (pid_ <= 0) return;
    for (pid_t d : Descendants(pid_)) kill(d, sig);
    kill(-pid_, sig);
    if (sig == SIGKILL || sig == SIGTERM) {
      for (int i = 0; i < 100; ++i) {
        if (waitpid(pid_, nullptr, WNOHANG) == pid_) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        if (i == 60) kill(-pid_, SIGKILL);
      }
      kill(-pid_, SIGKILL);
      pid_ = -1;
      if (out_ != nullptr) fclose(out_);
      out_ = nullptr;
    }
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  std::optional<int> exit_code_;
};

// The address after `prefix` on the next stdout line of `child`; "" when that line says
// something else (the line is then in `said`).
inline std::string AddressLine(Child& child, const std::string& prefix, std::string* said) {
  std::string line = child.ReadLine();
  const size_t at = line.find(prefix);
  if (said != nullptr) *said = line;
  if (at == std::string::npos) return "";
  std::string addr = line.substr(at + prefix.size());
  while (!addr.empty() && (addr.back() == '\n' || addr.back() == '\r' || addr.back() == ' ')) {
    addr.pop_back();
  }
  return addr;
}

// The address a server started as `child` prints first ("listening on HOST:PORT"); "" when its
// first stdout line says something else (the line is then in `said`).
inline std::string ListeningAddress(Child& child, std::string* said = nullptr) {
  return AddressLine(child, "listening on ", said);
}

// shardlm-coordinator's second stdout line, after ListeningAddress: where workers attach
// ("worker attach on HOST:PORT").
inline std::string WorkerAttachAddress(Child& child, std::string* said = nullptr) {
  return AddressLine(child, "worker attach on ", said);
}

// A fresh worker secret file (mode 600) at `path`, for --worker-secret-file on both sides.
inline std::string WriteWorkerSecret(const std::string& path) {
  std::ofstream(path, std::ios::trunc)
      << "e2e-worker-secret-" << getpid() << "-"
      << std::chrono::steady_clock::now().time_since_epoch().count() << "\n";
  chmod(path.c_str(), 0600);
  return path;
}

}  // namespace shardlm::e2e
