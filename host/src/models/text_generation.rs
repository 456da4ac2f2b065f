//! Text generation from a decoder's next-token log-probabilities: greedy search and beam
//! search with the rules of Hugging Face transformers' `generate` (the 5.x beam search,
//! which recognize-anything's captioning calls through BLIP's `BertLMHeadModel`):
//!
//! - a sequence ends at `eos`, which cannot come before the sequence (prompt included) is
//!   `min_length` tokens long, or at `max_length` tokens;
//! - each step keeps, per input, the `2 x beams` best continuations of all beams by summed
//!   log-probability; the best `beams` of them that did not end run on, and those among the
//!   first `beams` that ended are offered to the finished list, scored by their sum over
//!   their generated length (eos included) to the power `length_penalty`;
//! - an input stops when every finished slot is filled and no running beam, scored at its
//!   current length, could beat the worst finished one; the best finished sequence is the
//!   result.
//!
//! Inputs search together: one call of the model per step serves the beams of every input
//! still searching. Each call gives the model whole prefixes and, where every row extends a
//! row of the call before by one token, which one ([`Prefixes::extends`]), so that a model
//! with a cache of keys and values computes the new token alone.

use tch::{Kind, Tensor};

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Search {
    /// 1: greedy.
    pub beams: usize,
    pub max_length: usize,
    pub min_length: usize,
    pub length_penalty: f64,
    pub eos: i64,
}

/// One call of the model: prefixes of one length.
pub struct Prefixes<'a> {
    /// `(rows, length)` token ids.
    pub ids: &'a Tensor,
    /// The input of each block of `rows / inputs.len()` consecutive rows.
    pub inputs: &'a [usize],
    /// For each row, the row of the previous call it extends by its last token, where every
    /// row extends one; `None` at the first call, or after a call of other inputs.
    pub extends: Option<Vec<i64>>,
}

/// What transformers' beam search adds to a score to rule a candidate out.
const RULED_OUT: f64 = -1.0e9;

/// For each of `prompts` (token ids, prompt included), the generated sequence, the prompt
/// first, up to and with its `eos` when it has one. `log_probs(prefixes)` gives the
/// next-token log-probabilities `(rows, vocab)` of the [`Prefixes`].
pub fn generate(prompts: &[Vec<i64>], search: &Search, log_probs: impl FnMut(&Prefixes) -> Tensor) -> Vec<Vec<i64>> {
    if search.beams <= 1 { greedy(prompts, search, log_probs) } else { beam_search(prompts, search, log_probs) }
}

/// The log-probabilities of `rows` (each `(vocab)`) with `eos` ruled out while the
/// sequences are shorter than `min_length`.
fn processed(log_probs: Tensor, length: usize, search: &Search) -> Vec<Vec<f32>> {
    let log_probs = log_probs.to_kind(Kind::Float).to_device(tch::Device::Cpu);
    let mut rows = Vec::<Vec<f32>>::try_from(&log_probs).expect("log-probabilities are (rows, vocab)");
    if length < search.min_length {
        for row in &mut rows {
            row[search.eos as usize] = f32::NEG_INFINITY;
        }
    }
    rows
}

fn ids_tensor(sequences: &[&Vec<i64>]) -> Tensor {
    let length = sequences[0].len() as i64;
    let flat: Vec<i64> = sequences.iter().flat_map(|s| s.iter().copied()).collect();
    Tensor::from_slice(&flat).view([sequences.len() as i64, length])
}

/// Where each of `rows` (keys) is in the previous call's rows (`previous`, of `previous_length`)
/// when every one of them is and that call was one token shorter than `length`.
fn extended_rows<K: PartialEq>(rows: &[K], previous: &[K], previous_length: usize, length: usize) -> Option<Vec<i64>> {
    if previous_length + 1 != length {
        return None;
    }
    rows.iter().map(|row| previous.iter().position(|known| known == row).map(|at| at as i64)).collect()
}

fn greedy(prompts: &[Vec<i64>], search: &Search, mut log_probs: impl FnMut(&Prefixes) -> Tensor) -> Vec<Vec<i64>> {
    let mut sequences: Vec<Vec<i64>> = prompts.to_vec();
    let mut running: Vec<usize> = (0..prompts.len()).collect();
    let (mut previous, mut previous_length) = (Vec::new(), 0);
    while !running.is_empty() {
        // Prompts of one length run together, as a batch.
        let length = sequences[running[0]].len();
        if length >= search.max_length {
            break;
        }
        let batch: Vec<&Vec<i64>> = running.iter().map(|&input| &sequences[input]).collect();
        let extends = extended_rows(&running, &previous, previous_length, length);
        let prefixes = Prefixes { ids: &ids_tensor(&batch), inputs: &running, extends };
        let rows = processed(log_probs(&prefixes), length, search);
        (previous, previous_length) = (running.clone(), length);
        for (&input, row) in running.iter().zip(&rows) {
            let best = (0..row.len()).fold(0, |best, token| if row[token] > row[best] { token } else { best });
            sequences[input].push(best as i64);
        }
        running.retain(|&input| *sequences[input].last().expect("one token at least") != search.eos);
    }
    sequences
}

/// A beam of an input: its tokens and summed log-probability (float32, as transformers
/// keeps it).
#[derive(Debug, Clone)]
struct Beam {
    tokens: Vec<i64>,
    score: f32,
    /// The beam of the step before it extends.
    parent: usize,
}

/// One input's search: its running beams and finished sequences.
struct BeamSearch {
    prompt_length: usize,
    /// The length of every running beam.
    length: usize,
    running: Vec<Beam>,
    /// Finished sequences with their length-normalised scores, best first, `beams` at most.
    finished: Vec<(Vec<i64>, f32)>,
    done: bool,
}

impl BeamSearch {
    fn new(prompt: &[i64], search: &Search) -> Self {
        // Only the first beam starts; the others are copies ruled out until they diverge.
        let running = (0..search.beams)
            .map(|beam| Beam {
                tokens: prompt.to_vec(),
                score: if beam == 0 { 0.0 } else { RULED_OUT as f32 },
                parent: beam,
            })
            .collect();
        let length = prompt.len();
        BeamSearch { prompt_length: length, length, running, finished: Vec::new(), done: length >= search.max_length }
    }

    /// One step, from the next-token log-probabilities of each running beam, `rows`.
    fn advance(&mut self, rows: &[Vec<f32>], search: &Search) {
        let (beams, length, prompt_length) = (search.beams, self.length, self.prompt_length);
        let normalised = |score: f32, generated: usize| score / (generated as f32).powf(search.length_penalty as f32);
        // Every (beam, token) by summed log-probability; the 2 x beams best, as topk gives
        // them (descending; the lower flat index first among equals).
        let mut candidates: Vec<(f32, usize, i64)> = Vec::with_capacity(beams * rows[0].len());
        for (index, (beam, row)) in self.running.iter().zip(rows).enumerate() {
            candidates.extend(row.iter().enumerate().map(|(token, &p)| (p + beam.score, index, token as i64)));
        }
        let order =
            |a: &(f32, usize, i64), b: &(f32, usize, i64)| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2)));
        // The best 2 x beams of a vocabulary's worth: selected, then only those sorted.
        if candidates.len() > 2 * beams {
            candidates.select_nth_unstable_by(2 * beams, order);
            candidates.truncate(2 * beams);
        }
        candidates.sort_by(order);
        let at_max = length + 1 >= search.max_length;
        let ends = |token: i64| token == search.eos || at_max;
        let extended = |beam: usize, token: i64| {
            let mut tokens = self.running[beam].tokens.clone();
            tokens.push(token);
            tokens
        };
        for (rank, &(score, beam, token)) in candidates.iter().enumerate() {
            if rank < beams && ends(token) {
                self.finished.push((extended(beam, token), normalised(score, length + 1 - prompt_length)));
            }
        }
        self.finished.sort_by(|a, b| b.1.total_cmp(&a.1));
        self.finished.truncate(beams);
        let next: Vec<Beam> = candidates
            .iter()
            .filter(|&&(_, _, token)| !ends(token))
            .take(beams)
            .map(|&(score, beam, token)| Beam { tokens: extended(beam, token), score, parent: beam })
            .collect();
        self.length += 1;
        // Go on while a slot is free or the best running beam, at its length, beats the
        // worst finished sequence.
        let improvable = next.len() == beams
            && (self.finished.len() < beams
                || normalised(next[0].score, self.length - prompt_length)
                    > self.finished.last().expect("beams finished").1);
        if improvable && self.length < search.max_length {
            self.running = next;
        } else {
            self.done = true;
        }
    }

    fn best(mut self) -> Vec<i64> {
        match self.finished.into_iter().next() {
            Some((tokens, _)) => tokens,
            None => self.running.swap_remove(0).tokens,
        }
    }
}

/// Beam search of every input at once: each step asks the model for the running beams of
/// all inputs still searching whose beams are as long as the first one's.
fn beam_search(prompts: &[Vec<i64>], search: &Search, mut log_probs: impl FnMut(&Prefixes) -> Tensor) -> Vec<Vec<i64>> {
    let mut searches: Vec<BeamSearch> = prompts.iter().map(|prompt| BeamSearch::new(prompt, search)).collect();
    // The previous call's rows, as (input, beam).
    let (mut previous, mut previous_length) = (Vec::new(), 0);
    while let Some(first) = searches.iter().position(|input| !input.done) {
        let length = searches[first].length;
        let inputs: Vec<usize> =
            (first..searches.len()).filter(|&i| !searches[i].done && searches[i].length == length).collect();
        let batch: Vec<&Vec<i64>> =
            inputs.iter().flat_map(|&input| searches[input].running.iter().map(|beam| &beam.tokens)).collect();
        let parents: Vec<(usize, usize)> = inputs
            .iter()
            .flat_map(|&input| searches[input].running.iter().map(move |beam| (input, beam.parent)))
            .collect();
        let extends = extended_rows(&parents, &previous, previous_length, length);
        let prefixes = Prefixes { ids: &ids_tensor(&batch), inputs: &inputs, extends };
        let rows = processed(log_probs(&prefixes), length, search);
        previous = inputs.iter().flat_map(|&input| (0..search.beams).map(move |beam| (input, beam))).collect();
        previous_length = length;
        for (&input, rows) in inputs.iter().zip(rows.chunks(search.beams)) {
            searches[input].advance(rows, search);
        }
    }
    searches.into_iter().map(BeamSearch::best).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "model" whose next token's log-probabilities depend on the last token only.
    fn table(next: &[[f32; 4]; 4]) -> impl FnMut(&Prefixes) -> Tensor + '_ {
        move |prefixes: &Prefixes| {
            let ids = prefixes.ids;
            let last = ids.select(1, ids.size()[1] - 1);
            let last = Vec::<i64>::try_from(&last).unwrap();
            let rows: Vec<f32> = last.iter().flat_map(|&t| next[t as usize].map(f32::ln)).collect();
            Tensor::from_slice(&rows).view([last.len() as i64, 4])
        }
    }

    const EOS: i64 = 3;

    #[test]
    fn greedy_takes_the_likeliest_token_and_holds_eos_back_until_the_minimum_length() {
        // After 0: 1 likeliest; after 1: eos likeliest, then 2; after 2: eos.
        let next = [[0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.3, 0.5], [0.1, 0.1, 0.1, 0.7], [0.25; 4]];
        let search = Search { beams: 1, max_length: 10, min_length: 3, length_penalty: 1.0, eos: EOS };
        // [0] -> 1 (length 2 < 3: no eos) -> 2 -> eos.
        assert_eq!(generate(&[vec![0]], &search, table(&next)), vec![vec![0, 1, 2, 3]]);
        let longer = Search { min_length: 1, ..search };
        assert_eq!(generate(&[vec![0], vec![2]], &longer, table(&next)), vec![vec![0, 1, 3], vec![2, 3]]);
        let short = Search { max_length: 2, ..search };
        assert_eq!(generate(&[vec![0]], &short, table(&next)), vec![vec![0, 1]]);
    }

    #[test]
    fn beam_search_finds_the_likelier_sequence_greedy_misses() {
        // Greedy: 0 -> 1 (0.5) -> eos (0.3): 0.15. Beam: 0 -> 2 (0.4) -> eos (0.9): 0.36.
        let next = [[0.05, 0.5, 0.4, 0.05], [0.3, 0.2, 0.2, 0.3], [0.05, 0.025, 0.025, 0.9], [0.25; 4]];
        let greedy = Search { beams: 1, max_length: 3, min_length: 0, length_penalty: 1.0, eos: EOS };
        assert_eq!(generate(&[vec![0]], &greedy, table(&next)), vec![vec![0, 1, 0]]);
        let beam = Search { beams: 2, ..greedy };
        assert_eq!(generate(&[vec![0]], &beam, table(&next)), vec![vec![0, 2, 3]]);
        // Inputs searched together, one ending early and one of another length, each as alone.
        let prompts = [vec![0], vec![1, 2], vec![2], vec![0, 0]];
        let beam = Search { max_length: 6, ..beam };
        let alone: Vec<Vec<i64>> =
            prompts.iter().flat_map(|p| generate(std::slice::from_ref(p), &beam, table(&next))).collect();
        let (mut calls, mut extended, mut previous) = (0, 0, None::<Tensor>);
        let together = generate(&prompts, &beam, |prefixes| {
            calls += 1;
            let ids = prefixes.ids;
            assert_eq!(ids.size()[0] as usize, 2 * prefixes.inputs.len(), "two beams of each input asked");
            // A row said to extend a row of the previous call is that row and one token more.
            if let (Some(rows), Some(previous)) = (&prefixes.extends, &previous) {
                let parents = previous.index_select(0, &Tensor::from_slice(rows));
                assert!(parents.equal(&ids.narrow(1, 0, ids.size()[1] - 1)));
                extended += 1;
            }
            previous = Some(ids.shallow_clone());
            table(&next)(prefixes)
        });
        assert_eq!(together, alone);
        assert!(extended > 0, "calls after the first extend the one before");
        assert!(calls <= 6, "{calls} calls for the four inputs' steps");
    }
}
