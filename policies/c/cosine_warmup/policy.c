// `cosine_warmup` in C: linear warmup, then cosine decay to a floor, for every group; the same
// arguments and the same decisions as the Rust policy (policies/cosine_warmup).

#include <stdio.h>
#include <stdlib.h>

#include "trainer_policy.h"

static struct {
  double *base_lrs;
  size_t groups;
  uint64_t warmup_steps;
  uint64_t total_steps;
  double min_lr;
} policy;

static bool start(const run_spec_t *spec) {
  static const char *const known[] = {"warmup_steps", "min_lr", NULL};
  if (!args_check(spec, known) || !arg_f64_or(spec, "min_lr", 0.0, &policy.min_lr)) return false;
  if (policy.min_lr < 0.0) {
    char shown[DISPLAY_SIZE];
    rust_display(policy.min_lr, shown);
    snprintf(policy_error, ERROR_SIZE, "argument `min_lr`: must be >= 0, got %s", shown);
    return false;
  }
  if (!arg_u64_or(spec, "warmup_steps", spec->total_steps / 20, &policy.warmup_steps)) return false;
  policy.total_steps = spec->total_steps;
  policy.groups = spec->groups.len;
  policy.base_lrs = realloc(policy.base_lrs, sizeof(double) * policy.groups);
  for (size_t i = 0; i < policy.groups; i++) policy.base_lrs[i] = spec->groups.ptr[i].base_lr;
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
  *ret = keep();
  ret->lrs.len = policy.groups;
  ret->lrs.ptr = malloc(sizeof(policy_option_f64_t) * policy.groups);
  for (size_t i = 0; i < policy.groups; i++) {
    double lr = cosine_warmup(observation->step, policy.base_lrs[i], policy.warmup_steps, policy.total_steps,
                              policy.min_lr);
    ret->lrs.ptr[i] = (policy_option_f64_t){.is_some = true, .val = lr};
  }
  trainer_policy_types_observation_free(observation);
}

void exports_trainer_policy_strategy_save_state(policy_list_u8_t *ret) { *ret = (policy_list_u8_t){0}; }

bool exports_trainer_policy_strategy_load_state(policy_list_u8_t *state, policy_string_t *err) {
  size_t len = state->len;
  policy_list_u8_free(state);
  if (len == 0) return true;
  snprintf(policy_error, ERROR_SIZE, "this policy keeps no state, but was given %zu bytes", len);
  set_error(err);
  return false;
}
