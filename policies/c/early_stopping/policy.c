// `early_stopping` in C: stops the run when the monitored metric has not improved for
// `patience`, on a NaN or infinite loss or gradient norm, or when the training loss diverges;
// the same arguments, decisions, messages and state bytes as the Rust policy
// (policies/early_stopping, whose module doc defines them).

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer_policy.h"

static struct {
  size_t metric;
  char *metric_name;
  bool maximize;
  uint64_t patience;
  bool count_steps;
  double min_delta;
  uint64_t start;
  uint64_t eval_every;
  bool stop_on_non_finite;
  double diverge_factor;
  // State.
  bool has_best;
  double best;
  uint64_t best_step;
  uint64_t evaluations_without_improvement;
  double lowest_loss;
} policy;

static bool start(const run_spec_t *spec) {
  static const char *const known[] = {"metric",     "mode",       "patience",           "unit",           "min_delta",
                                      "start",      "eval_every", "stop_on_non_finite", "diverge_factor", NULL};
  static const char *const modes[] = {"min", "max", NULL};
  static const char *const units[] = {"evaluations", "steps", NULL};
  if (!args_check(spec, known)) return false;
  char first[256] = "";
  if (spec->metrics.len) snprintf(first, sizeof first, "%.*s", (int)spec->metrics.ptr[0].len, spec->metrics.ptr[0].ptr);
  free(policy.metric_name);
  policy.metric_name = arg_str_or(spec, "metric", first);
  size_t mode, unit;
  if (!metric_index(spec, "metric", policy.metric_name, &policy.metric) ||
      !arg_choice(spec, "mode", modes, default_mode(policy.metric_name), &mode) ||
      !arg_u64_or(spec, "patience", 5, &policy.patience) ||
      !arg_choice(spec, "unit", units, "evaluations", &unit) ||
      !arg_f64_or(spec, "min_delta", 0.0, &policy.min_delta) || !arg_u64_or(spec, "start", 0, &policy.start) ||
      !arg_u64_or(spec, "eval_every", 0, &policy.eval_every) ||
      !arg_bool_or(spec, "stop_on_non_finite", true, &policy.stop_on_non_finite) ||
      !arg_f64_or(spec, "diverge_factor", 10.0, &policy.diverge_factor)) {
    return false;
  }
  policy.maximize = mode == 1;
  policy.count_steps = unit == 1;
  policy.min_delta = fabs(policy.min_delta);
  policy.has_best = false;
  policy.evaluations_without_improvement = 0;
  policy.lowest_loss = INFINITY;
  return true;
}

bool exports_trainer_policy_strategy_init(run_spec_t *spec, trainer_policy_types_knobs_t *ret, policy_string_t *err) {
  bool ok = start(spec);
  trainer_policy_types_run_spec_free(spec);
  if (!ok) set_error(err);
  *ret = 0;
  return ok;
}

// The reason to stop before this step, formatted into `policy_error`, or false to go on.
static bool stop_reason(const observation_t *observation) {
  uint64_t done = observation->step;
  if (policy.stop_on_non_finite && observation->non_finite) {
    snprintf(policy_error, ERROR_SIZE, "non-finite loss or gradient norm before step %llu", (unsigned long long)done);
    return true;
  }
  if (done < policy.start) return false;
  double loss = observation->total_loss.val;
  if (observation->total_loss.is_some && isfinite(loss)) {
    if (policy.diverge_factor > 0.0 && loss > policy.diverge_factor * policy.lowest_loss) {
      char shown_loss[DISPLAY_SIZE], shown_lowest[DISPLAY_SIZE];
      rust_display(loss, shown_loss);
      rust_display(policy.lowest_loss, shown_lowest);
      snprintf(policy_error, ERROR_SIZE, "training loss %s diverged (lowest %s)", shown_loss, shown_lowest);
      return true;
    }
    policy.lowest_loss = fmin(policy.lowest_loss, loss);
  }
  const trainer_policy_types_option_evaluation_t *evaluation = &observation->evaluation;
  if (!evaluation->is_some || policy.metric >= evaluation->val.values.len) return false;
  double value = evaluation->val.values.ptr[policy.metric];
  bool improved = !policy.has_best ||
                  (policy.maximize ? value > policy.best + policy.min_delta : value < policy.best - policy.min_delta);
  if (improved) {
    policy.has_best = true;
    policy.best = value;
    policy.best_step = evaluation->val.step;
    policy.evaluations_without_improvement = 0;
    return false;
  }
  policy.evaluations_without_improvement++;
  bool out_of_patience = policy.count_steps ? evaluation->val.step - policy.best_step >= policy.patience
                                            : policy.evaluations_without_improvement >= policy.patience;
  if (!out_of_patience) return false;
  char shown_best[DISPLAY_SIZE];
  rust_display(policy.best, shown_best);
  snprintf(policy_error, ERROR_SIZE, "%s has not improved on %s (step %llu) for %llu evaluations", policy.metric_name,
           shown_best, (unsigned long long)policy.best_step, (unsigned long long)policy.evaluations_without_improvement);
  return true;
}

void exports_trainer_policy_strategy_decide(observation_t *observation, decision_t *ret) {
  *ret = keep();
  ret->evaluate = policy.eval_every > 0 && (observation->step + 1) % policy.eval_every == 0;
  if (stop_reason(observation)) {
    ret->stop.is_some = true;
    set_error(&ret->stop.val);
  }
  trainer_policy_types_observation_free(observation);
}

void exports_trainer_policy_strategy_save_state(policy_list_u8_t *ret) {
  state_writer_t writer = {0};
  state_bool(&writer, policy.has_best);
  state_f64(&writer, policy.has_best ? policy.best : 0.0);
  state_u64(&writer, policy.has_best ? policy.best_step : 0);
  state_u64(&writer, policy.evaluations_without_improvement);
  state_f64(&writer, policy.lowest_loss);
  *ret = (policy_list_u8_t){.ptr = writer.bytes, .len = writer.len};
}

bool exports_trainer_policy_strategy_load_state(policy_list_u8_t *state, policy_string_t *err) {
  state_reader_t reader = {.bytes = state->ptr, .len = state->len};
  bool has_best;
  double best, lowest_loss;
  uint64_t best_step, evaluations_without_improvement;
  bool ok = read_bool(&reader, "has_best", &has_best) && read_f64(&reader, "best", &best) &&
            read_u64(&reader, "best_step", &best_step) &&
            read_u64(&reader, "evaluations_without_improvement", &evaluations_without_improvement) &&
            read_f64(&reader, "lowest_loss", &lowest_loss) && read_finish(&reader);
  policy_list_u8_free(state);
  if (!ok) {
    set_error(err);
    return false;
  }
  policy.has_best = has_best;
  policy.best = best;
  policy.best_step = best_step;
  policy.evaluations_without_improvement = evaluations_without_improvement;
  policy.lowest_loss = lowest_loss;
  return true;
}
