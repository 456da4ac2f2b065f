// `cosine_warmup` in C: linear warmup, then cosine decay to a floor, for every group,
// re-planned when a resumed run changes its length; the same arguments, decisions and state as
// the Rust policy (policies/cosine_warmup).

#include <stdio.h>
#include <stdlib.h>

#include "trainer_policy.h"

static cosine_schedule_t schedule;

static bool start(const run_spec_t *spec) {
  static const char *const known[] = {"warmup_steps", "min_lr", "warmup_start", NULL};
  double min_lr;
  uint64_t warmup_steps;
  bool zero_start;
  if (!args_check(spec, known) || !arg_f64_or(spec, "min_lr", 0.0, &min_lr)) return false;
  if (min_lr < 0.0) {
    char shown[DISPLAY_SIZE];
    rust_display(min_lr, shown);
    snprintf(policy_error, ERROR_SIZE, "argument `min_lr`: must be >= 0, got %s", shown);
    return false;
  }
  if (!arg_u64_or(spec, "warmup_steps", spec->total_steps / 20, &warmup_steps)) return false;
  if (!arg_warmup_start_zero(spec, &zero_start)) return false;
  size_t groups = spec->groups.len;
  double *base_lrs = malloc(sizeof(double) * groups);
  for (size_t i = 0; i < groups; i++) base_lrs[i] = spec->groups.ptr[i].base_lr;
  cosine_schedule_init(&schedule, base_lrs, groups, warmup_steps, zero_start, min_lr, spec->total_steps);
  return true;
}

bool exports_trainer_policy_strategy_init(run_spec_t *spec, trainer_policy_types_knobs_t *ret, policy_string_t *err) {
  bool ok = start(spec);
  trainer_policy_types_run_spec_free(spec);
  if (!ok) set_error(err);
  *ret = TRAINER_POLICY_TYPES_KNOBS_LEARNING_RATES;
  return ok;
}

void exports_trainer_policy_strategy_decide(observation_t *observation, decision_t *ret) {
  uint64_t step = observation->step;
  cosine_schedule_begin_step(&schedule, step);
  *ret = keep();
  ret->lrs.len = schedule.groups;
  ret->lrs.ptr = malloc(sizeof(policy_option_f64_t) * schedule.groups);
  for (size_t i = 0; i < schedule.groups; i++)
    ret->lrs.ptr[i] = (policy_option_f64_t){.is_some = true, .val = cosine_schedule_rate(&schedule, i, step)};
  trainer_policy_types_observation_free(observation);
}

void exports_trainer_policy_strategy_save_state(policy_list_u8_t *ret) {
  state_writer_t writer = {0};
  cosine_schedule_save(&schedule, &writer);
  *ret = (policy_list_u8_t){.ptr = writer.bytes, .len = writer.len};
}

bool exports_trainer_policy_strategy_load_state(policy_list_u8_t *state, policy_string_t *err) {
  state_reader_t reader = {.bytes = state->ptr, .len = state->len};
  bool ok = cosine_schedule_load(&schedule, &reader) && read_finish(&reader);
  policy_list_u8_free(state);
  if (!ok) set_error(err);
  return ok;
}
