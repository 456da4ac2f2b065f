// Helpers shared by the JavaScript policies, each mirroring the Rust guest SDK (guest-sdk/) so
// a JavaScript policy reads its arguments, keeps its state and formats its messages exactly as
// the Rust policy of the same name: same values, same errors, same bytes. WIT's u64 values
// are BigInts here.

// Rust's `str::parse::<f64>` grammar: JavaScript's Number() also takes "", hex and
// "Infinity" but not "inf", so the text is checked against it first.
const RUST_F64 = /^[+-]?(inf|infinity|nan|(\d+\.?\d*|\.\d+)(e[+-]?\d+)?)$/i;

function parseF64(text) {
  const match = RUST_F64.exec(text);
  if (!match) return undefined;
  if (match[2] === undefined) {
    return match[1].toLowerCase() === 'nan' ? NaN : text.startsWith('-') ? -Infinity : Infinity;
  }
  return Number(text);
}

/** The user's policy arguments, checked against the names the policy knows; the last
 * occurrence of a name wins, as on a command line. */
export class Args {
  constructor(pairs, known) {
    for (const [name] of pairs) {
      if (!known.includes(name)) {
        const takes = known.length ? known.join(', ') : 'none';
        throw `unknown argument \`${name}\` (this policy takes: ${takes})`;
      }
    }
    this.pairs = pairs;
  }

  raw(name) {
    for (let i = this.pairs.length - 1; i >= 0; i--) {
      if (this.pairs[i][0] === name) return this.pairs[i][1];
    }
    return undefined;
  }

  f64Or(name, fallback) {
    const text = this.raw(name);
    if (text === undefined) return fallback;
    const value = parseF64(text.trim());
    if (value === undefined || !Number.isFinite(value)) {
      throw `argument \`${name}\`: expected a finite number, got \`${text}\``;
    }
    return value;
  }

  u64Or(name, fallback) {
    const text = this.raw(name);
    if (text === undefined) return fallback;
    const digits = text.trim().replace(/^\+/, '');
    if (!/^[0-9]+$/.test(digits) || BigInt(digits) >= 1n << 64n) {
      throw `argument \`${name}\`: expected a non-negative whole number, got \`${text}\``;
    }
    return BigInt(digits);
  }

  strOr(name, fallback) {
    const text = this.raw(name);
    return text === undefined ? fallback : text;
  }

  boolOr(name, fallback) {
    const text = this.raw(name);
    if (text === undefined) return fallback;
    if (['true', '1', 'yes'].includes(text)) return true;
    if (['false', '0', 'no'].includes(text)) return false;
    throw `argument \`${name}\`: expected true or false, got \`${text}\``;
  }

  choice(name, options, fallback) {
    const value = this.strOr(name, fallback);
    if (!options.includes(value)) throw `argument \`${name}\`: expected one of ${options.join(', ')}, got \`${value}\``;
    return value;
  }
}

/** Index of the evaluation metric `name` in the run spec; the error lists the choices. */
export function metricIndex(spec, argument, name) {
  const index = spec.metrics.indexOf(name);
  if (index < 0) {
    throw `argument \`${argument}\`: \`${name}\` is not a metric of this run (metrics: ${spec.metrics.join(', ')})`;
  }
  return index;
}

/** Losses are minimised, everything else maximised. */
export function defaultMode(name) {
  return name.endsWith('loss') ? 'min' : 'max';
}

/** Linear warmup to `base`, then cosine decay to `floor`, with the operations of the Rust
 * SDK's schedules in the same order, so the results are bit-identical. */
export function cosineWarmup(step, base, warmup, total, floor) {
  return cosineWarmupFrom(step, base, warmup, false, total, floor, [warmup, base]);
}

/** The `warmup_start` argument: false for `one_step` (the default: the warmup starts at
 * `base / w`), true for `zero` (it starts at 0, as transformers' schedules do). */
export function warmupStartZero(args) {
  return args.choice('warmup_start', ['one_step', 'zero'], 'one_step') === 'zero';
}

/** `cosineWarmup` with the warmup starting at 0 when `zeroStart`, and whose decay starts at
 * step `decayStart[0]` from the rate `decayStart[1]` (after a re-plan) instead of at the end
 * of the warmup from `base`. */
export function cosineWarmupFrom(step, base, warmup, zeroStart, total, floor, decayStart) {
  if (step < warmup) return (Number(zeroStart ? step : step + 1n) / Number(warmup)) * base;
  const [start, rate] = decayStart;
  floor = Math.min(floor, base);
  const decaySteps = total > start ? total - start : 1n;
  const progress = Math.min(Number(step > start ? step - start : 0n) / Number(decaySteps), 1.0);
  return floor + (rate - floor) * (0.5 * (1.0 + Math.cos(Math.PI * progress)));
}

/** Linear warmup, then cosine decay to a floor, for every group, re-planned when a resumed
 * run changes its length, as the Rust SDK's `plan::CosineSchedule` (same state bytes). */
export class CosineSchedule {
  constructor(baseLrs, warmupSteps, minLr, totalSteps, zeroStart = false) {
    this.baseLrs = baseLrs;
    this.warmupSteps = warmupSteps;
    this.zeroStart = zeroStart;
    this.minLr = minLr;
    this.totalSteps = totalSteps;
    // A new length waiting for the next decision, where the resume step is known.
    this.pendingTotal = undefined;
    // [step, rate per group]: where the decay was re-planned.
    this.restart = undefined;
  }

  beginStep(step) {
    if (this.pendingTotal === undefined) return;
    const values = this.baseLrs.map((_, group) => this.rate(group, step));
    this.totalSteps = this.pendingTotal;
    this.pendingTotal = undefined;
    if (step >= this.warmupSteps) this.restart = [step, values];
  }

  rate(group, step) {
    const base = this.baseLrs[group];
    const start = this.restart ? [this.restart[0], this.restart[1][group]] : [this.warmupSteps, base];
    return cosineWarmupFrom(step, base, this.warmupSteps, this.zeroStart, this.totalSteps, this.minLr, start);
  }

  save(writer) {
    writer.u64(this.warmupSteps).u64(this.totalSteps);
    if (this.restart === undefined) return writer.bool(false);
    return writer.bool(true).u64(this.restart[0]).f64s(this.restart[1]);
  }

  load(reader) {
    this.warmupSteps = reader.u64('warmup steps');
    const saved = reader.u64('planned total steps');
    const runTotal = this.pendingTotal ?? this.totalSteps;
    this.pendingTotal = saved !== runTotal ? runTotal : undefined;
    this.totalSteps = saved;
    this.restart = undefined;
    if (reader.bool('restarted')) {
      this.restart = [reader.u64('restart step'), reader.f64s('restart rates', this.baseLrs.length)];
    }
  }
}

/** `value` as Rust's `{}` prints an f64: the shortest digits that read back to it, always
 * positional (no exponent), no `.0` on whole numbers, `inf` and `NaN`. */
export function rustDisplay(value) {
  if (Number.isNaN(value)) return 'NaN';
  if (!Number.isFinite(value)) return value > 0 ? 'inf' : '-inf';
  const sign = value < 0 || Object.is(value, -0) ? '-' : '';
  const [mantissa, exponent = '0'] = String(Math.abs(value)).split('e');
  const [whole, fraction = ''] = mantissa.split('.');
  const all = whole + fraction;
  let digits = all.replace(/^0+/, '');
  // Position of the decimal point relative to the start of `digits`.
  const point = whole.length + Number(exponent) - (all.length - digits.length);
  digits = digits.replace(/0+$/, '');
  if (!digits) return sign + '0';
  if (point <= 0) return `${sign}0.${'0'.repeat(-point)}${digits}`;
  if (point >= digits.length) return sign + digits + '0'.repeat(point - digits.length);
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/** State bytes in the Rust SDK's encoding: little-endian, floats bit for bit. */
export class StateWriter {
  constructor() {
    this.bytes = [];
  }

  push(size, write) {
    const view = new DataView(new ArrayBuffer(size));
    write(view);
    this.bytes.push(...new Uint8Array(view.buffer));
    return this;
  }

  f64(value) {
    return this.push(8, (view) => view.setFloat64(0, value, true));
  }

  u64(value) {
    return this.push(8, (view) => view.setBigUint64(0, value, true));
  }

  bool(value) {
    return this.push(1, (view) => view.setUint8(0, value ? 1 : 0));
  }

  f64s(values) {
    return values.reduce((writer, value) => writer.f64(value), this.u64(BigInt(values.length)));
  }

  finish() {
    return new Uint8Array(this.bytes);
  }
}

/** Reads what StateWriter wrote, in order; every error says what was missing. */
export class StateReader {
  constructor(bytes) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.at = 0;
  }

  take(size, what) {
    if (this.view.byteLength - this.at < size) throw `state ends before \`${what}\``;
    this.at += size;
    return this.at - size;
  }

  f64(what) {
    return this.view.getFloat64(this.take(8, what), true);
  }

  u64(what) {
    return this.view.getBigUint64(this.take(8, what), true);
  }

  bool(what) {
    const byte = this.view.getUint8(this.take(1, what));
    if (byte > 1) throw `\`${what}\`: ${byte} is not a boolean`;
    return byte === 1;
  }

  f64s(what, expected) {
    const count = this.u64(what);
    if (count !== BigInt(expected)) throw `\`${what}\`: state has ${count} values, this run needs ${expected}`;
    return Array.from({ length: expected }, () => this.f64(what));
  }

  finish() {
    const left = this.view.byteLength - this.at;
    if (left) throw `${left} unexpected bytes at the end of the state`;
  }
}

/** A decision that changes nothing and requests nothing. */
export function keep() {
  return {
    lrs: [],
    lrMultipliers: [],
    lossWeights: [],
    augmentation: [],
    gradClip: undefined,
    freeze: [],
    evaluate: false,
    checkpoint: false,
    stop: undefined,
    measureLossGradients: false,
    snapshot: false,
    rollback: undefined,
  };
}

/** Base of a policy: the constructor reads the run spec and arguments (throwing a message to
 * refuse them), `knobs` names the kinds of knob it sets, `decide(observation)` returns a
 * decision. This default keeps no state. */
export class Policy {
  saveState() {
    return new Uint8Array(0);
  }

  loadState(state) {
    if (state.length) throw `this policy keeps no state, but was given ${state.length} bytes`;
  }
}

/** The `strategy` interface the component exports, over one instance of `PolicyClass` kept
 * for the whole run, like the Rust SDK's `export_policy!`. */
export function exportPolicy(PolicyClass) {
  let policy;
  return {
    init(spec) {
      policy = new PolicyClass(spec);
      return policy.knobs;
    },
    decide: (observation) => policy.decide(observation),
    saveState: () => policy.saveState(),
    loadState: (state) => policy.loadState(state),
  };
}
