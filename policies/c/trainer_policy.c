// Helpers shared by the C policies (see trainer_policy.h). Only wasi-libc's pure functions
// are used (string, malloc, strtod, snprintf, cos), so the module imports nothing.

#include "trainer_policy.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char policy_error[ERROR_SIZE];

static bool string_is(const policy_string_t *text, const char *name) {
  return text->len == strlen(name) && memcmp(text->ptr, name, text->len) == 0;
}

bool args_check(const run_spec_t *spec, const char *const *known) {
  for (size_t i = 0; i < spec->args.len; i++) {
    const policy_string_t *name = &spec->args.ptr[i].f0;
    bool found = false;
    for (const char *const *k = known; *k && !found; k++) found = string_is(name, *k);
    if (found) continue;
    int at = snprintf(policy_error, ERROR_SIZE, "unknown argument `%.*s` (this policy takes: ", (int)name->len,
                      (const char *)name->ptr);
    for (const char *const *k = known; *k && at < ERROR_SIZE; k++) {
      at += snprintf(policy_error + at, ERROR_SIZE - at, "%s%s", k == known ? "" : ", ", *k);
    }
    if (!*known && at < ERROR_SIZE) at += snprintf(policy_error + at, ERROR_SIZE - at, "none");
    if (at < ERROR_SIZE) snprintf(policy_error + at, ERROR_SIZE - at, ")");
    return false;
  }
  return true;
}

char *arg_raw(const run_spec_t *spec, const char *name) {
  for (size_t i = spec->args.len; i-- > 0;) {
    if (!string_is(&spec->args.ptr[i].f0, name)) continue;
    const policy_string_t *value = &spec->args.ptr[i].f1;
    char *copy = malloc(value->len + 1);
    memcpy(copy, value->ptr, value->len);
    copy[value->len] = 0;
    return copy;
  }
  return NULL;
}

// `text` without leading and trailing ASCII whitespace, in place.
static char *trim(char *text) {
  while (isspace((unsigned char)*text)) text++;
  size_t len = strlen(text);
  while (len && isspace((unsigned char)text[len - 1])) text[--len] = 0;
  return text;
}

// Whether `text` is in the grammar of Rust's `str::parse::<f64>`: strtod also takes hex,
// `nan(...)` and leading whitespace, which Rust refuses.
static bool rust_f64_syntax(const char *text) {
  if (*text == '+' || *text == '-') text++;
  if (!strcasecmp(text, "inf") || !strcasecmp(text, "infinity") || !strcasecmp(text, "nan")) return true;
  size_t digits = 0;
  while (isdigit((unsigned char)*text)) text++, digits++;
  if (*text == '.') {
    text++;
    while (isdigit((unsigned char)*text)) text++, digits++;
  }
  if (!digits) return false;
  if (*text == 'e' || *text == 'E') {
    text++;
    if (*text == '+' || *text == '-') text++;
    if (!isdigit((unsigned char)*text)) return false;
    while (isdigit((unsigned char)*text)) text++;
  }
  return *text == 0;
}

bool arg_f64_or(const run_spec_t *spec, const char *name, double fallback, double *out) {
  char *text = arg_raw(spec, name);
  if (!text) {
    *out = fallback;
    return true;
  }
  char *trimmed = trim(text);
  bool ok = rust_f64_syntax(trimmed);
  if (ok) *out = strtod(trimmed, NULL);
  ok = ok && isfinite(*out);
  if (!ok) {
    char *raw = arg_raw(spec, name);
    snprintf(policy_error, ERROR_SIZE, "argument `%s`: expected a finite number, got `%s`", name, raw);
    free(raw);
  }
  free(text);
  return ok;
}

bool arg_u64_or(const run_spec_t *spec, const char *name, uint64_t fallback, uint64_t *out) {
  char *text = arg_raw(spec, name);
  if (!text) {
    *out = fallback;
    return true;
  }
  const char *digits = trim(text);
  if (*digits == '+') digits++;
  bool ok = *digits != 0;
  uint64_t value = 0;
  for (const char *d = digits; ok && *d; d++) {
    ok = isdigit((unsigned char)*d) && value <= (UINT64_MAX - (uint64_t)(*d - '0')) / 10;
    value = value * 10 + (uint64_t)(*d - '0');
  }
  if (ok) *out = value;
  else {
    char *raw = arg_raw(spec, name);
    snprintf(policy_error, ERROR_SIZE, "argument `%s`: expected a non-negative whole number, got `%s`", name, raw);
    free(raw);
  }
  free(text);
  return ok;
}

bool arg_bool_or(const run_spec_t *spec, const char *name, bool fallback, bool *out) {
  char *text = arg_raw(spec, name);
  bool ok = true;
  if (!text) *out = fallback;
  else if (!strcmp(text, "true") || !strcmp(text, "1") || !strcmp(text, "yes")) *out = true;
  else if (!strcmp(text, "false") || !strcmp(text, "0") || !strcmp(text, "no")) *out = false;
  else {
    snprintf(policy_error, ERROR_SIZE, "argument `%s`: expected true or false, got `%s`", name, text);
    ok = false;
  }
  free(text);
  return ok;
}

char *arg_str_or(const run_spec_t *spec, const char *name, const char *fallback) {
  char *text = arg_raw(spec, name);
  return text ? text : strdup(fallback);
}

bool arg_choice(const run_spec_t *spec, const char *name, const char *const *options, const char *fallback,
                size_t *out) {
  char *value = arg_str_or(spec, name, fallback);
  for (size_t i = 0; options[i]; i++) {
    if (!strcmp(options[i], value)) {
      *out = i;
      free(value);
      return true;
    }
  }
  int at = snprintf(policy_error, ERROR_SIZE, "argument `%s`: expected one of ", name);
  for (size_t i = 0; options[i] && at < ERROR_SIZE; i++) {
    at += snprintf(policy_error + at, ERROR_SIZE - at, "%s%s", i ? ", " : "", options[i]);
  }
  if (at < ERROR_SIZE) snprintf(policy_error + at, ERROR_SIZE - at, ", got `%s`", value);
  free(value);
  return false;
}

bool metric_index(const run_spec_t *spec, const char *argument, const char *name, size_t *out) {
  for (size_t i = 0; i < spec->metrics.len; i++) {
    if (string_is(&spec->metrics.ptr[i], name)) {
      *out = i;
      return true;
    }
  }
  int at = snprintf(policy_error, ERROR_SIZE, "argument `%s`: `%s` is not a metric of this run (metrics: ", argument,
                    name);
  for (size_t i = 0; i < spec->metrics.len && at < ERROR_SIZE; i++) {
    const policy_string_t *metric = &spec->metrics.ptr[i];
    at += snprintf(policy_error + at, ERROR_SIZE - at, "%s%.*s", i ? ", " : "", (int)metric->len,
                   (const char *)metric->ptr);
  }
  if (at < ERROR_SIZE) snprintf(policy_error + at, ERROR_SIZE - at, ")");
  return false;
}

const char *default_mode(const char *name) {
  size_t len = strlen(name);
  return len >= 4 && !strcmp(name + len - 4, "loss") ? "min" : "max";
}

double cosine_warmup(uint64_t step, double base, uint64_t warmup, uint64_t total, double floor) {
  return cosine_warmup_from(step, base, warmup, false, total, floor, warmup, base);
}

double cosine_warmup_from(uint64_t step, double base, uint64_t warmup, bool zero_start, uint64_t total, double floor,
                          uint64_t start, double rate) {
  if (step < warmup) return (double)(zero_start ? step : step + 1) / (double)warmup * base;
  floor = fmin(floor, base);
  uint64_t decay_steps = total > start ? total - start : 1;
  double progress = fmin((double)(step > start ? step - start : 0) / (double)decay_steps, 1.0);
  return floor + (rate - floor) * (0.5 * (1.0 + cos(M_PI * progress)));
}

bool arg_warmup_start_zero(const run_spec_t *spec, bool *out) {
  static const char *const starts[] = {"one_step", "zero", NULL};
  size_t chosen;
  if (!arg_choice(spec, "warmup_start", starts, "one_step", &chosen)) return false;
  *out = chosen == 1;
  return true;
}

void cosine_schedule_init(cosine_schedule_t *schedule, double *base_lrs, size_t groups, uint64_t warmup_steps,
                          bool zero_start, double min_lr, uint64_t total_steps) {
  free(schedule->base_lrs);
  free(schedule->restart_rates);
  *schedule = (cosine_schedule_t){
      .base_lrs = base_lrs,
      .groups = groups,
      .warmup_steps = warmup_steps,
      .zero_start = zero_start,
      .min_lr = min_lr,
      .total_steps = total_steps,
      .restart_rates = malloc(sizeof(double) * groups),
  };
}

void cosine_schedule_begin_step(cosine_schedule_t *schedule, uint64_t step) {
  if (!schedule->pending) return;
  double *rates = malloc(sizeof(double) * schedule->groups);
  for (size_t i = 0; i < schedule->groups; i++) rates[i] = cosine_schedule_rate(schedule, i, step);
  schedule->total_steps = schedule->pending_total;
  schedule->pending = false;
  if (step >= schedule->warmup_steps) {
    schedule->restarted = true;
    schedule->restart_step = step;
    memcpy(schedule->restart_rates, rates, sizeof(double) * schedule->groups);
  }
  free(rates);
}

double cosine_schedule_rate(const cosine_schedule_t *schedule, size_t group, uint64_t step) {
  double base = schedule->base_lrs[group];
  uint64_t start = schedule->restarted ? schedule->restart_step : schedule->warmup_steps;
  double rate = schedule->restarted ? schedule->restart_rates[group] : base;
  return cosine_warmup_from(step, base, schedule->warmup_steps, schedule->zero_start, schedule->total_steps,
                            schedule->min_lr, start, rate);
}

void cosine_schedule_save(const cosine_schedule_t *schedule, state_writer_t *writer) {
  state_u64(writer, schedule->warmup_steps);
  state_u64(writer, schedule->total_steps);
  state_bool(writer, schedule->restarted);
  if (schedule->restarted) {
    state_u64(writer, schedule->restart_step);
    state_f64s(writer, schedule->restart_rates, schedule->groups);
  }
}

bool cosine_schedule_load(cosine_schedule_t *schedule, state_reader_t *reader) {
  uint64_t saved;
  if (!read_u64(reader, "warmup steps", &schedule->warmup_steps) ||
      !read_u64(reader, "planned total steps", &saved))
    return false;
  uint64_t run_total = schedule->pending ? schedule->pending_total : schedule->total_steps;
  schedule->pending = saved != run_total;
  schedule->pending_total = run_total;
  schedule->total_steps = saved;
  if (!read_bool(reader, "restarted", &schedule->restarted)) return false;
  if (!schedule->restarted) return true;
  return read_u64(reader, "restart step", &schedule->restart_step) &&
         read_f64s(reader, "restart rates", schedule->groups, schedule->restart_rates);
}

void rust_display(double value, char *out) {
  if (isnan(value)) {
    strcpy(out, "NaN");
    return;
  }
  if (isinf(value)) {
    strcpy(out, value > 0 ? "inf" : "-inf");
    return;
  }
  char *at = out;
  if (signbit(value)) *at++ = '-';
  value = fabs(value);
  if (value == 0) {
    strcpy(at, "0");
    return;
  }
  // The shortest `%e` that reads back to the same value: correctly rounded digits, as
  // Rust's shortest representation has them.
  char scientific[32];
  for (int precision = 0; precision < 17; precision++) {
    snprintf(scientific, sizeof scientific, "%.*e", precision, value);
    if (strtod(scientific, NULL) == value) break;
  }
  char digits[24];
  size_t count = 0;
  char *cursor = scientific;
  for (; *cursor != 'e'; cursor++) {
    if (*cursor != '.') digits[count++] = *cursor;
  }
  while (count > 1 && digits[count - 1] == '0') count--;
  // Position of the decimal point relative to the start of `digits`.
  int point = atoi(cursor + 1) + 1;
  if (point <= 0) {
    at += sprintf(at, "0.");
    for (int i = 0; i < -point; i++) *at++ = '0';
    memcpy(at, digits, count);
    at[count] = 0;
  } else if ((size_t)point >= count) {
    memcpy(at, digits, count);
    memset(at + count, '0', point - count);
    at[point] = 0;
  } else {
    memcpy(at, digits, point);
    at[point] = '.';
    memcpy(at + point + 1, digits + point, count - point);
    at[count + 1] = 0;
  }
}

static void state_push(state_writer_t *writer, uint64_t value, size_t size) {
  writer->bytes = realloc(writer->bytes, writer->len + size);
  for (size_t i = 0; i < size; i++) writer->bytes[writer->len++] = (uint8_t)(value >> (8 * i));
}

void state_f64(state_writer_t *writer, double value) {
  uint64_t bits;
  memcpy(&bits, &value, 8);
  state_push(writer, bits, 8);
}

void state_u64(state_writer_t *writer, uint64_t value) { state_push(writer, value, 8); }

void state_bool(state_writer_t *writer, bool value) { state_push(writer, value, 1); }

void state_f64s(state_writer_t *writer, const double *values, size_t count) {
  state_u64(writer, count);
  for (size_t i = 0; i < count; i++) state_f64(writer, values[i]);
}

static bool state_take(state_reader_t *reader, const char *what, size_t size, uint64_t *out) {
  if (reader->len - reader->at < size) {
    snprintf(policy_error, ERROR_SIZE, "state ends before `%s`", what);
    return false;
  }
  *out = 0;
  for (size_t i = 0; i < size; i++) *out |= (uint64_t)reader->bytes[reader->at++] << (8 * i);
  return true;
}

bool read_f64(state_reader_t *reader, const char *what, double *out) {
  uint64_t bits;
  if (!state_take(reader, what, 8, &bits)) return false;
  memcpy(out, &bits, 8);
  return true;
}

bool read_u64(state_reader_t *reader, const char *what, uint64_t *out) { return state_take(reader, what, 8, out); }

bool read_bool(state_reader_t *reader, const char *what, bool *out) {
  uint64_t byte;
  if (!state_take(reader, what, 1, &byte)) return false;
  if (byte > 1) {
    snprintf(policy_error, ERROR_SIZE, "`%s`: %d is not a boolean", what, (int)byte);
    return false;
  }
  *out = byte == 1;
  return true;
}

bool read_f64s(state_reader_t *reader, const char *what, size_t expected, double *out) {
  uint64_t count;
  if (!read_u64(reader, what, &count)) return false;
  if (count != expected) {
    snprintf(policy_error, ERROR_SIZE, "`%s`: state has %llu values, this run needs %zu", what,
             (unsigned long long)count, expected);
    return false;
  }
  for (size_t i = 0; i < expected; i++)
    if (!read_f64(reader, what, &out[i])) return false;
  return true;
}

bool read_finish(const state_reader_t *reader) {
  size_t left = reader->len - reader->at;
  if (left) snprintf(policy_error, ERROR_SIZE, "%zu unexpected bytes at the end of the state", left);
  return left == 0;
}

decision_t keep(void) { return (decision_t){0}; }

void set_error(policy_string_t *err) { policy_string_dup(err, policy_error); }
