// placement.cpp: head groups placed on workers (remote.hpp): finding them, checking them against the plan and
// describing them for the start-up log. Whole stages on workers are checked and described in engine.cpp.
#include <string>

#include "remote.hpp"

namespace troupe {

const RemoteStages* Placement::find_group(int replica, int stage, int group) const {
  for (const auto& r : remote) {
    if (r.groups() && (r.replica < 0 || r.replica == replica) && stage >= r.stage_begin && stage < r.stage_end &&
        group >= r.group_begin && group < r.group_end) {
      return &r;
    }
  }
  return nullptr;
}

Expected<void> check_group_placement(const Plan& plan) {
  auto bad = [](const std::string& m) { return Error{ErrorKind::invalid_argument, m}; };
  for (const auto& r : plan.placement.remote) {
    if (!r.groups()) continue;
    const std::string where = "placement of head groups on " + r.host + ":" + std::to_string(r.port);
    if (r.host.empty() || r.port < 1 || r.port > 65535) return bad(where + ": a worker needs HOST:PORT");
    if (r.replica >= plan.replicas) return bad(where + ": replica " + std::to_string(r.replica) + " does not exist");
    if (r.stage_begin < 0 || r.stage_begin >= r.stage_end || r.stage_end > plan.pp) {
      return bad(where + ": stages " + std::to_string(r.stage_begin) + ".." + std::to_string(r.stage_end - 1) +
                 " outside the pipeline's 0.." + std::to_string(plan.pp - 1));
    }
    if (r.group_begin < 0 || r.group_end > plan.tp) {
      return bad(where + ": head groups " + std::to_string(r.group_begin) + ".." + std::to_string(r.group_end - 1) +
                 " outside the plan's 0.." + std::to_string(plan.tp - 1) + " (tp " + std::to_string(plan.tp) + ")");
    }
    for (int rep = 0; rep < plan.replicas; ++rep) {
      if (r.replica >= 0 && r.replica != rep) continue;
      for (int s = r.stage_begin; s < r.stage_end; ++s) {
        // The stage actor (norms, residual, the all-reduce) stays where the stage runs: here. A stage on one worker
        // with its groups on another would put the all-reduce's traffic between two workers, which the star (every
        // link ends at the coordinator) does not have.
        if (const RemoteStages* w = plan.placement.find(rep, s)) {
          return bad(where + ": stage " + std::to_string(s) + " of replica " + std::to_string(rep) + " runs on " +
                     w->host + ":" + std::to_string(w->port) +
                     "; head groups can be placed only for stages that run in this process");
        }
        for (int g = r.group_begin; g < r.group_end; ++g) {
          if (plan.placement.find_group(rep, s, g) != &r) {
            return bad(where + ": head group " + std::to_string(g) + " of stage " + std::to_string(s) +
                       " is placed twice");
          }
        }
      }
    }
  }
  return {};
}

std::string describe_groups(const Plan& plan, int replica, int stage) {
  std::string out;
  int n_here = 0;
  for (int g = 0; g < plan.tp;) {
    const RemoteStages* w = plan.placement.find_group(replica, stage, g);
    int e = g + 1;
    while (e < plan.tp && plan.placement.find_group(replica, stage, e) == w) ++e;
    if (w) {
      out += (out.empty() ? "" : ", ") + std::string(e - g > 1 ? "head groups " : "head group ") + std::to_string(g) +
             (e - g > 1 ? "-" + std::to_string(e - 1) : "") + " on " + w->host + ":" + std::to_string(w->port);
    } else {
      n_here += e - g;
    }
    g = e;
  }
  if (out.empty()) return out;
  return "; " + out + ", " + std::to_string(n_here) + " of its " + std::to_string(plan.tp) +
         " here: two all-reduces per layer cross processes";
}

}  // namespace troupe
