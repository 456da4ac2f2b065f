// Helpers shared by the C policies, each mirroring the Rust guest SDK (guest-sdk/) so a C
// policy reads its arguments, keeps its state and formats its messages exactly as the Rust
// policy of the same name: same values, same errors, same bytes. Built with the bindings
// `wit-bindgen c` generates for the world `policy` (policy.h).

#ifndef TRAINER_POLICY_H
#define TRAINER_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy.h"

typedef trainer_policy_types_run_spec_t run_spec_t;
typedef trainer_policy_types_observation_t observation_t;
typedef trainer_policy_types_decision_t decision_t;

// Error messages are built into this buffer; functions that can fail return false and leave
// the message here, for `policy_string_dup` into the WIT error.
#define ERROR_SIZE 1024
extern char policy_error[ERROR_SIZE];

// The user's policy arguments: every name must be in `known` (NULL-terminated); the last
// occurrence of a name wins, as on a command line.
bool args_check(const run_spec_t *spec, const char *const *known);
// The value of `name` as a NUL-terminated copy (malloc'd), or NULL when not given.
char *arg_raw(const run_spec_t *spec, const char *name);
bool arg_f64_or(const run_spec_t *spec, const char *name, double fallback, double *out);
bool arg_u64_or(const run_spec_t *spec, const char *name, uint64_t fallback, uint64_t *out);
bool arg_bool_or(const run_spec_t *spec, const char *name, bool fallback, bool *out);
// The value of `name` (or `fallback`) as a malloc'd string.
char *arg_str_or(const run_spec_t *spec, const char *name, const char *fallback);
// Which of `options` (NULL-terminated) was given for `name`, `fallback` when none was.
bool arg_choice(const run_spec_t *spec, const char *name, const char *const *options, const char *fallback,
                size_t *out);

// Index of the evaluation metric `name` in the run spec; the error lists the choices.
bool metric_index(const run_spec_t *spec, const char *argument, const char *name, size_t *out);
// Losses are minimised, everything else maximised.
const char *default_mode(const char *name);

// Linear warmup to `base`, then cosine decay to `floor`, with the operations of the Rust
// SDK's schedules in the same order.
double cosine_warmup(uint64_t step, double base, uint64_t warmup, uint64_t total, double floor);
// `cosine_warmup` with the warmup starting at 0 when `zero_start`, and whose decay starts at
// step `start` from the rate `rate` (after a re-plan) instead of at the end of the warmup
// from `base`.
double cosine_warmup_from(uint64_t step, double base, uint64_t warmup, bool zero_start, uint64_t total, double floor,
                          uint64_t start, double rate);
// The `warmup_start` argument into `out`: false for `one_step` (the default: the warmup starts
// at `base / w`), true for `zero` (it starts at 0, as transformers' schedules do).
bool arg_warmup_start_zero(const run_spec_t *spec, bool *out);

// `value` as Rust's `{}` prints an f64 (shortest digits that read back, positional, `inf`,
// `NaN`), into `out` (at least 400 bytes: the longest positional f64 plus a NUL).
#define DISPLAY_SIZE 400
void rust_display(double value, char *out);

// State bytes in the Rust SDK's encoding: little-endian, floats bit for bit.
typedef struct {
  uint8_t *bytes;
  size_t len;
} state_writer_t;
void state_f64(state_writer_t *writer, double value);
void state_u64(state_writer_t *writer, uint64_t value);
void state_bool(state_writer_t *writer, bool value);
void state_f64s(state_writer_t *writer, const double *values, size_t count);

typedef struct {
  const uint8_t *bytes;
  size_t len;
  size_t at;
} state_reader_t;
bool read_f64(state_reader_t *reader, const char *what, double *out);
bool read_u64(state_reader_t *reader, const char *what, uint64_t *out);
bool read_bool(state_reader_t *reader, const char *what, bool *out);
// A list of exactly `expected` numbers into `out`.
bool read_f64s(state_reader_t *reader, const char *what, size_t expected, double *out);
bool read_finish(const state_reader_t *reader);

// Linear warmup, then cosine decay to a floor, for every group, re-planned when a resumed
// run changes its length, as the Rust SDK's `plan::CosineSchedule` (same state bytes).
typedef struct {
  double *base_lrs;
  size_t groups;
  uint64_t warmup_steps;
  bool zero_start;
  double min_lr;
  uint64_t total_steps;
  // A new length waiting for the next decision, where the resume step is known.
  bool pending;
  uint64_t pending_total;
  // Where the decay was re-planned, and the rate of each group there.
  bool restarted;
  uint64_t restart_step;
  double *restart_rates;
} cosine_schedule_t;
// Takes ownership of `base_lrs` (malloc'd, `groups` long).
void cosine_schedule_init(cosine_schedule_t *schedule, double *base_lrs, size_t groups, uint64_t warmup_steps,
                          bool zero_start, double min_lr, uint64_t total_steps);
void cosine_schedule_begin_step(cosine_schedule_t *schedule, uint64_t step);
double cosine_schedule_rate(const cosine_schedule_t *schedule, size_t group, uint64_t step);
void cosine_schedule_save(const cosine_schedule_t *schedule, state_writer_t *writer);
bool cosine_schedule_load(cosine_schedule_t *schedule, state_reader_t *reader);

// A decision that changes nothing.
decision_t keep(void);
// Sets `err` to the message in `policy_error`.
void set_error(policy_string_t *err);

#endif
