// gpu_stage_actor.cpp: a pipeline stage on a CUDA device. Its protocol is a stage's (messages.hpp):
//   in:  (step, Shared<StepData>, Activations)      from the scheduler (first stage: activations empty) or the stage
//                                                   before
//   in:  (step, Shared<StepData>, DeviceActivations) from a GPU stage before it in this process: copied device to
//                                                   device (a peer copy when the devices differ)
//   out: (step, Shared<StepData>, Activations)      the residual stream, to the next stage
//        (step, Shared<StepData>, DeviceActivations) the same left on the device, when the next stage is a GPU stage
//        (result, step id, Logits)                  the last stage's logits, to the scheduler
//        (failed, step id, message)                 a step the device failed, to the scheduler
//   in:  (fault, group) / (fault, stage, group)     fault injection: the stage exits as a dead device would
// It runs on its own thread (detached): a step blocks until the device finishes it, and the CUDA stream it owns is
// used from that thread only. Activations cross between host and device through the stage's pinned buffers.
#include <chrono>

#include <spdlog/spdlog.h>

#include "troupe.hpp"

namespace troupe {

namespace {

struct GpuState {
  GpuStageInit init;
  std::unique_ptr<GpuStage> gpu;
  ShardCounters* counters = nullptr;
};

using GpuActor = caf::stateful_actor<GpuState>;

void exit_with(GpuActor* self, const std::string& why) {
  spdlog::error("replica {} stage {}: {}", self->state.init.replica, self->state.init.stage, why);
  self->quit(caf::make_error(caf::sec::runtime_error, why));
}

// One step: input from the host (x_in) or a device (x_dev); output to the next stage on the host or, when it is a GPU
// stage here, left on the device; the last stage's logits to the scheduler.
void run_step(GpuActor* self, const Shared<StepData>& step, const float* x_in, const DeviceActivations* x_dev) {
  auto& s = self->state;
  ShardCounters::add(s.counters->taken, 1);
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = s.init.model->config();
  const bool last = s.init.spec.last;
  const bool to_device = !last && s.init.downstream_gpu;
  auto out = std::make_shared<std::vector<float>>(
      last ? step->logit_rows.size() * c.n_vocab : to_device ? 0 : static_cast<size_t>(step->layout.n_tokens) * c.n_embd);
  DeviceActivations dev_out;
  auto r = s.gpu->run_device(step->layout, step->step_id, step->tokens.data(), x_in, x_dev, last ? nullptr : out->data(),
                             to_device, &dev_out, step->logit_rows, last ? out->data() : nullptr);
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0);
  s.counters->observe_step(static_cast<uint64_t>(ns.count()));
  s.init.metrics->compute_ns += static_cast<uint64_t>(ns.count());
  s.init.metrics->messages += 1;
  if (!r) {
    self->send(s.init.scheduler, failed_atom::value, step->step_id, r.error().message);
    if (s.gpu->broken()) exit_with(self, s.gpu->device_name() + " is unusable: " + r.error().message);
    return;
  }
  if (last) {
    self->send(s.init.downstream, result_atom::value, step->step_id, Logits{std::move(out)});
  } else if (to_device) {
    self->send(s.init.downstream, step_atom::value, step, dev_out);
  } else {
    self->send(s.init.downstream, step_atom::value, step, Activations{std::move(out)});
  }
}

caf::behavior gpu_stage_actor(GpuActor* self, GpuStageInit init) {
  auto& st = self->state;
  st.init = std::move(init);
  st.counters = &st.init.metrics->shard(st.init.replica, st.init.stage, 0);
  auto gpu = GpuStage::create(st.init.model, st.init.spec);
  if (!gpu) {
    exit_with(self, "stage " + std::to_string(st.init.stage) + " on cuda:" + std::to_string(st.init.spec.device) +
                        ": " + gpu.error().message);
    return {};
  }
  st.gpu = std::move(*gpu);
  spdlog::info("replica {} stage {}: layers {}..{} on {} ({} MiB on the device)", st.init.replica, st.init.stage,
               st.init.spec.layer_begin, st.init.spec.layer_end - 1, st.gpu->device_name(), st.gpu->device_bytes() >> 20);
  auto fault = [self] { exit_with(self, "injected fault on " + self->state.gpu->device_name()); };
  return {
      [=](step_atom, Shared<StepData>& step, Activations& x) {
        const ModelConfig& c = self->state.init.model->config();
        const size_t expected = static_cast<size_t>(step->layout.n_tokens) * c.n_embd;
        if (!self->state.init.spec.first && (!x.ptr || x->size() != expected)) {
          self->send(self->state.init.scheduler, failed_atom::value, step->step_id,
                     std::string("activations of the wrong size"));
          return;
        }
        run_step(self, step, self->state.init.spec.first ? nullptr : x->data(), nullptr);
      },
      [=](step_atom, Shared<StepData>& step, DeviceActivations& x) { run_step(self, step, nullptr, &x); },
      [=](fault_atom, int) { fault(); },
      [=](fault_atom, int, int) { fault(); },
  };
}

}  // namespace

caf::actor spawn_gpu_stage(caf::local_actor* parent, GpuStageInit init) {
  return parent->spawn<caf::detached>(gpu_stage_actor, std::move(init));
}

}  // namespace troupe
