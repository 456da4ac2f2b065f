//! The command line: `trainer train --policy cosine_warmup ...`, and the commands around a
//! run (check a policy, simulate one, evaluate, embed or predict with a trained model).
//! Parses and checks flags, hands them to the engine and the tasks, and maps failures to
//! one-line messages and exit codes.

use crate::check::{CheckOptions, check_policy};
use crate::data::detection::{DetectionFormat, Part};
use crate::distributed::{DistributedError, Launch, Team, launch::spawn_local};
use crate::engine::{
    BestMetric, DEFAULT_KEEP_CHECKPOINTS, DEFAULT_MAX_SKIPPED_STEPS, DEFAULT_SNAPSHOTS, EngineError, Resume, RunConfig,
    RunLock, RunOptions, Scores, SimulateOptions, SyntheticCurve, Trace, TrainOutcome, check_batch_splits, simulate,
    write_json,
};
use crate::eval::COCO_MISSING;
use crate::files::FileError;
use crate::models::clip;
use crate::models::groups::GroupBy;
use crate::policy::{PolicyError, PolicyRuntime, PolicySource, SandboxLimits};
use crate::sweep::results::{ResultsError, aligned, write_results};
use crate::sweep::{Study, SweepEnd, SweepError, SweepRequest, TrainFlags, run_sweep};
use crate::tasks::clip::{EmbedRequest, embed};
use crate::tasks::detection::{self, DetectionPredictRequest};
use crate::tasks::tagging::{self, PredictRequest, predict};
use crate::tasks::use_model::{EvalRequest, ImageSource, evaluate, kind_of_folder};
use crate::tasks::{self, Execution, TaskArgs, TaskConfig, TaskKind};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tch::Device;

#[derive(Debug, Parser)]
#[command(
    name = "trainer",
    version,
    about = "Fine-tune vision and vision-language models, steered by a WebAssembly policy.",
    long_about = "Fine-tune vision and vision-language models, steered by a WebAssembly policy.\n\n\
        Tasks (--task): `clip`, contrastive image-text training of a CLIP dual encoder (Hugging Face \
        CLIP folders in and out; zero-shot accuracy, retrieval recall); `tagging`, a multi-label \
        tagger on CLIP's image tower, or recognize-anything's RAM++ and RAM from their .pth, with \
        tag, align and distill losses (mAP, precision/recall); \
        `detection`, OWL-ViT/OWLv2 open-vocabulary detection on COCO boxes (COCO AP). \
        After training: `eval` a saved model, `embed` images and texts, `predict` a tagger's tags \
        or a detector's boxes. `trainer <command> --help` lists each command's flags."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train or fine-tune a model: `--task clip` (contrastive, on image-caption pairs:
    /// Fashion-MNIST with templated captions by default, COCO captions, or a JSONL manifest),
    /// `--task tagging` (a multi-label tagger: Fashion-MNIST mosaics by default, or a tagged
    /// JSONL manifest) or `--task detection` (OWL-ViT/OWLv2: Fashion-MNIST canvases by
    /// default, COCO instances, a JSONL manifest of boxes, Pascal VOC or YOLO).
    Train(Box<TrainArgs>),
    /// Evaluate a saved model (a run's final/, best/, checkpoints/step-N/, or a Hugging Face
    /// folder) with the metrics of the end of a run, on the run's data or other data.
    Eval(Box<EvalArgs>),
    /// Write L2-normalised CLIP embeddings of images and texts to a safetensors file.
    Embed(EmbedArgs),
    /// Write a tagger's tags and scores for each image to a JSONL file, or a detector's boxes
    /// as a COCO results file.
    Predict(PredictArgs),
    /// Check a policy against generated observation streams before a long run: no trap,
    /// valid decisions, determinism, exact save/load of its state.
    CheckPolicy(CheckPolicyArgs),
    /// Drive policies with a recorded run's metrics (or a synthetic curve) and no model:
    /// what they decide, where they stop, plots of the knobs.
    Simulate(SimulateArgs),
    /// List the policies built into the trainer (`--policy NAME[:ARGS]`), with the knobs each
    /// owns and its arguments; with a NAME, print that policy's whole documentation.
    Policies(PoliciesArgs),
    /// Prepare detection data: `convert` it between COCO, JSONL, Pascal VOC and YOLO, `check`
    /// it for what training refuses or would learn wrong, `split` it into train, val and test.
    #[command(subcommand)]
    Data(DataCommand),
    /// Search hyper-parameters: trials of `trainer train` over a space of its flags and its
    /// policies' arguments, proposed by Optuna (TPE by default) and pruned on their
    /// evaluations, or a population trained by Ray Tune's population-based training
    /// (`scheduler = "pbt"`), each trial a run folder RUN/trials/NNNN; prints the table of
    /// trials and writes trials.csv, best.json (the best trial's command or schedule) and plots.
    Sweep(SweepArgs),
}

#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// The spec (TOML): [train] args and policies, [space], [objective], [budget], [search],
    /// [pbt] (see docs/sweep.md).
    #[arg(required_unless_present = "resume")]
    pub spec: Option<PathBuf>,
    #[arg(long, default_value = "runs/sweep", conflicts_with = "resume")]
    pub run_dir: PathBuf,
    /// Continue the sweep in RUN_DIR from its study: interrupted trials resume from their
    /// checkpoints, finished ones stay, new ones start while the budget lasts. A second
    /// process given the same folder joins a search that is still running.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "spec")]
    pub resume: Option<PathBuf>,
    /// The Python to run the search with, which has Optuna (Ray Tune for PBT) [default:
    /// $TRAINER_PYTHON, else the Python `make` set up when the trainer was built, else python3].
    #[arg(long)]
    pub python: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write a detection set in another format, images linked (or copied) into its layout:
    /// COCO `annotations/instances_P.json` and `P/`, JSONL `P.jsonl` and `images/`, VOC
    /// `Annotations/`, `JPEGImages/` and `ImageSets/Main/P.txt`, YOLO `images/P/`,
    /// `labels/P/` and `data.yaml` (P: the part, train by default).
    Convert(DataConvertArgs),
    /// Check a detection set: errors (what training refuses, images that do not decode or
    /// are not the size annotated) and warnings (boxes under --min-box pixels, duplicate
    /// boxes, images or classes without boxes), per-class counts and box-size histograms.
    /// Writes check.json and PNGs; exits 1 when there are errors.
    Check(DataCheckArgs),
    /// Split a detection set into train, val and test, stratified by class (iterative
    /// stratification), keeping each --group in one part; writes the parts and prints their
    /// per-class table.
    Split(DataSplitArgs),
}

/// The detection set a `trainer data` command reads.
#[derive(Debug, clap::Args)]
pub struct DataSetArgs {
    /// A COCO instances .json, a .jsonl manifest, a Pascal VOC folder or split list
    /// (`ImageSets/Main/train.txt`), or a YOLO data.yaml or folder (`images/`, `labels/`).
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    /// Folder the images are in, when not the format's own (see `train --images`).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// The part of a YOLO data.yaml to read [default: convert: every part it names; others: train].
    #[arg(long, value_enum)]
    pub part: Option<Part>,
}

#[derive(Debug, clap::Args)]
pub struct DataConvertArgs {
    #[command(flatten)]
    pub set: DataSetArgs,
    /// The format to write.
    #[arg(long, value_enum)]
    pub to: DetectionFormat,
    /// The folder to write into; nothing there is overwritten.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DataCheckArgs {
    #[command(flatten)]
    pub set: DataSetArgs,
    /// Boxes narrower or lower than this many pixels are warned of.
    #[arg(long, default_value_t = 3.0, value_name = "PIXELS")]
    pub min_box: f64,
    /// Two boxes of one class in one image overlapping more than this IoU are warned of.
    #[arg(long, default_value_t = 0.95, value_name = "IOU")]
    pub duplicate_iou: f64,
    /// Where check.json, box_sizes.png and aspect_ratios.png are written.
    #[arg(long, value_name = "DIR", default_value = "runs/data-check")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DataSplitArgs {
    #[command(flatten)]
    pub set: DataSetArgs,
    /// Fractions of train, val and test (a missing test is 0); they add up to 1.
    #[arg(long, value_delimiter = ',', default_value = "0.8,0.1,0.1", value_name = "TRAIN,VAL,TEST")]
    pub fractions: Vec<f64>,
    /// Images of one group stay in one part: a field of the COCO image entries
    /// (`video_id`), or a regular expression over the image paths whose first capture group
    /// (or whole match) names the group (`'/(scene\d+)_'`).
    #[arg(long, value_name = "FIELD|REGEX")]
    pub group: Option<String>,
    /// Seed of the order groups are placed in.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The format to write the parts in.
    #[arg(long, value_enum, default_value = "coco")]
    pub to: DetectionFormat,
    /// The folder to write into; nothing there is overwritten.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct PoliciesArgs {
    /// A built-in policy whose documentation to print.
    pub name: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// A built-in policy by name (`trainer policies`) or a component file, with arguments;
    /// repeat to compose [default: the recorded run's].
    #[arg(long, value_name = "NAME|FILE[:ARGS]", required_unless_present = "trace")]
    pub policy: Vec<PolicySource>,
    /// A policy to run beside them as a shadow, compared with them and plotted with them;
    /// repeatable [default: the recorded run's shadows].
    #[arg(long, value_name = "NAME|FILE[:ARGS]")]
    pub shadow_policy: Vec<PolicySource>,
    /// A run directory whose metrics.jsonl and evaluations.jsonl drive the policies.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "synthetic")]
    pub trace: Option<PathBuf>,
    /// A synthetic stream instead: each loss decays from 100, 10, 1, ... with noise.
    #[arg(long, required_unless_present = "trace")]
    pub synthetic: bool,
    /// Steps of the synthetic stream.
    #[arg(long, default_value_t = 1000, value_parser = positive_u64)]
    pub steps: u64,
    /// Steps per epoch of the synthetic stream.
    #[arg(long, default_value_t = 100, value_parser = positive_u64)]
    pub steps_per_epoch: u64,
    /// Loss terms of the synthetic stream, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "contrastive")]
    pub losses: Vec<String>,
    /// Parameter groups of the synthetic stream, comma-separated [default: CLIP's].
    #[arg(long, value_delimiter = ',')]
    pub groups: Option<Vec<String>>,
    /// Evaluate (`val_loss`) every N synthetic steps; 0: when a policy asks.
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Base learning rate of the synthetic run's groups.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Seed of the synthetic noise and of the policies' run specification.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where decisions.jsonl and the plots are written.
    #[arg(long, default_value = "runs/simulate")]
    pub out: PathBuf,
    /// Fuel a policy may use per call.
    #[arg(long, default_value_t = 50_000_000, value_parser = positive_u64)]
    pub policy_fuel: u64,
}

#[derive(Debug, clap::Args)]
pub struct CheckPolicyArgs {
    /// A built-in policy by name (`trainer policies`) or a component file, optionally with
    /// arguments: `cosine_warmup:warmup_steps=100`, `file.wasm:key=value,key=value`.
    #[arg(value_name = "NAME|FILE[:ARGS]")]
    pub policy: PolicySource,
    /// Streams to generate.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub cases: u32,
    /// Run length the policy is told, and the longest stream.
    #[arg(long, default_value_t = 2000, value_parser = positive_u64)]
    pub steps: u64,
    /// Fuel a policy may use per call.
    #[arg(long, default_value_t = 50_000_000, value_parser = positive_u64)]
    pub policy_fuel: u64,
    /// Seed of the stream generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The run spec's groups: CLIP's parts, or (`layer`) each layer of two-block towers with
    /// its depth, for policies that need depths (`llrd`).
    #[arg(long, value_enum, default_value = "part")]
    pub group_by: GroupBy,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// A built-in policy by name (`trainer policies`) or a component file, optionally with
    /// arguments: `cosine_warmup:warmup_steps=100`, `file.wasm:key=value,key=value`.
    /// Repeat to compose policies; each kind of knob is owned by one of them.
    #[arg(long, value_name = "NAME|FILE[:ARGS]", required_unless_present = "resume")]
    pub policy: Vec<PolicySource>,
    /// A policy run beside the others, seeing the same observations: its decisions are
    /// checked and written to decisions.jsonl marked `"shadow": true`, never applied, and
    /// it is dropped with a warning if it fails. Repeatable; on --resume, replaces the
    /// saved shadows.
    #[arg(long, value_name = "NAME|FILE[:ARGS]")]
    pub shadow_policy: Vec<PolicySource>,
    /// `clip`: image-text contrastive training; `tagging`: a multi-label tagger on CLIP's
    /// image tower, trained on 2x2 Fashion-MNIST mosaics by default; `detection`: OWL-ViT or
    /// OWLv2 on COCO-format boxes, Fashion-MNIST canvases by default [default: clip].
    #[arg(long, value_enum)]
    pub task: Option<TaskKind>,
    #[command(flatten)]
    pub task_args: TaskArgs,
    /// Number of optimizer steps [default: 1000]. With --resume: the run's new length; the
    /// policies re-plan their schedules from the resume step (see each policy's doc).
    #[arg(long, value_parser = positive_u64, allow_negative_numbers = true)]
    pub steps: Option<u64>,
    /// Images per step [default: 256].
    #[arg(long, value_parser = positive_usize, allow_negative_numbers = true)]
    pub batch_size: Option<usize>,
    /// Seed of initialisation, data order and every per-sample random choice [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Base learning rate of every parameter group, before the policies' schedule [default: 2e-3].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// AdamW weight decay, not applied to biases, norms and the logit scale [default: 0.1].
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f64>,
    /// Evaluate on the validation images every N steps; 0: only when a policy asks [default: 0].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Histograms of each parameter group's weights and gradients in TensorBoard every N
    /// steps [default: none].
    #[arg(long, value_name = "N", value_parser = positive_u64)]
    pub histograms: Option<u64>,
    /// Save a checkpoint every N steps; 0: only when a policy asks [default: 0].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Stop the run as diverged (exit code 4, no final/) after N steps in a row whose loss or
    /// gradient norm was not finite; 0: never [default: 3].
    #[arg(long, value_name = "N")]
    pub max_skipped_steps: Option<u64>,
    /// Keep the newest N checkpoints, deleting older ones once a new one is complete; 0: keep
    /// all [default: 3].
    #[arg(long, value_name = "N")]
    pub keep_checkpoints: Option<usize>,
    /// Fuel (about one unit per Wasm instruction) a policy may use per call [default: 50000000].
    #[arg(long, value_parser = positive_u64)]
    pub policy_fuel: Option<u64>,
    /// Keep the weights of the best evaluation in RUN_DIR/best/, by this metric
    /// (`name`, `name:max` or `name:min`; names with `loss` are minimised by default).
    #[arg(long, value_name = "METRIC")]
    pub best_metric: Option<BestMetric>,
    /// Threads decoding images [default: the number of CPUs, at most 8].
    #[arg(long, value_name = "N", value_parser = positive_usize)]
    pub workers: Option<usize>,
    /// Keep only each transformer layer's input during the forward and compute the layer
    /// again in backward: less activation memory for about one more forward; the gradients
    /// are the same; a resumed run may change it.
    #[arg(long)]
    pub grad_checkpointing: bool,
    /// `auto` (CUDA when libtorch sees a GPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: Device,
    /// Directory for metrics, decisions, checkpoints, weights and evaluation.
    #[arg(long, default_value = "runs/train", conflicts_with = "resume")]
    pub run_dir: PathBuf,
    /// Replace an earlier run in --run-dir instead of refusing to start.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Save a checkpoint and exit after N steps, as a preempted job would; continue with --resume.
    #[arg(long, value_name = "N", value_parser = positive_u64)]
    pub pause_after_steps: Option<u64>,
    /// Save a checkpoint and exit, as on a pause, once this process has trained this long
    /// (`3600`, `90m`, `2h30m`); the policies see the seconds left.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub time_limit: Option<std::time::Duration>,
    /// Snapshots of weights, optimizer state and data position that a policy's `snapshot`
    /// action keeps in memory for `rollback`, the oldest dropped first [default: 1].
    #[arg(long, value_name = "N")]
    pub snapshots: Option<usize>,
    /// Continue the run in this directory from its latest checkpoint, with its saved settings
    /// (--steps, --keep-checkpoints, --max-skipped-steps and --policy with --swap-policies
    /// may change).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// On --resume, continue with the policies given by --policy instead of the saved ones.
    #[arg(long, requires = "resume")]
    pub swap_policies: bool,
    /// On --resume, go on although the data differs from what the run started on (a file
    /// changed, the samples counted otherwise): said in run.log and recorded in run.json.
    #[arg(long, requires = "resume")]
    pub data_changed: bool,
    /// Train on N local processes, data-parallel over PyTorch's c10d (Gloo), as `torchrun
    /// --nproc-per-node N --no-python trainer train ...` does; --batch-size stays the global
    /// batch, split evenly over the processes.
    #[arg(long, value_name = "N", value_parser = positive_usize)]
    pub nproc: Option<usize>,
    /// Seconds a data-parallel process waits for the others to join, and for any one
    /// collective [default: 1800].
    #[arg(long, value_name = "SECONDS", value_parser = positive_u64)]
    pub dist_timeout: Option<u64>,
    /// Open the data, the model and the policies (which check their arguments), print what
    /// the run would train as JSON (its parameter groups, losses, metrics, steps) and exit:
    /// nothing is written. A sweep checks its spec this way. With --nproc, the plan is one
    /// process's, the batch checked against the split.
    #[arg(long, conflicts_with = "resume")]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The model: a run's final/, best/ or checkpoints/step-N/ (evaluated on the run's data
    /// with its settings), or a Hugging Face CLIP or OWL-ViT/OWLv2 folder, or a saved tagger.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The task to evaluate as [default: the run's, or what the folder holds].
    #[arg(long, value_enum)]
    pub task: Option<TaskKind>,
    /// Data to evaluate on instead of the run's (as `train --data`); the final evaluation of
    /// that data is used: Fashion-MNIST's test split, the mosaics' test split, or the
    /// held-out part of a caption set or manifest (all of --val-data when given).
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Folder the image paths of --data or --val-data are relative to.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// A held-out set to evaluate on, whole (COCO or JSONL).
    #[arg(long, value_name = "PATH")]
    pub val_data: Option<PathBuf>,
    /// Tag vocabulary of a tagging manifest, for a tagger outside its run.
    #[arg(long, value_name = "FILE")]
    pub tags: Option<PathBuf>,
    /// Leave out missing or unreadable images instead of stopping.
    #[arg(long)]
    pub skip_bad_samples: bool,
    /// Seed of seeded evaluation data (the mosaic test split) [default: the run's, or 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also write the metrics to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// For a tagger: write each tag's F1-best threshold on these images to FILE, one per
    /// line in the order of its tags (RAM's threshold format, which `train --thresholds`
    /// reads).
    #[arg(long, value_name = "FILE")]
    pub calibrate_thresholds: Option<PathBuf>,
    /// `auto` (CUDA when libtorch sees a GPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: Device,
    /// Threads decoding images [default: the number of CPUs, at most 8].
    #[arg(long, value_name = "N", value_parser = positive_usize)]
    pub workers: Option<usize>,
    /// Keep only each transformer layer's input during the forward and compute the layer
    /// again in backward: less activation memory for about one more forward; the gradients
    /// are the same. May differ on --resume
    #[arg(long)]
    pub grad_checkpointing: bool,
}

/// The images a model is applied to, and the device it runs on.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// A folder of PNG and JPEG images (sorted by name).
    #[arg(long, value_name = "DIR", conflicts_with = "data")]
    pub images: Option<PathBuf>,
    /// The images of a COCO file or JSONL manifest.
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Folder the image paths of --data are relative to.
    #[arg(long, value_name = "DIR", requires = "data")]
    pub images_of_data: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64, value_parser = positive_usize)]
    pub batch_size: usize,
}

impl ImageArgs {
    fn source(self) -> ImageSource {
        ImageSource {
            folder: self.images,
            data: self.data,
            images_of_data: self.images_of_data,
            batch_size: self.batch_size,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    /// A CLIP model folder: a clip run's final/ or best/, or a Hugging Face CLIP folder.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Texts to embed, one per line, tokenized with the model folder's tokenizer.
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
    /// The safetensors file to write: `image_embeddings`, `text_embeddings`, with the image
    /// paths and texts in its metadata.
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
    /// `auto` (CUDA when libtorch sees a GPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: Device,
}

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// A tagger or a detector: the final/ or best/ of a `--task tagging` or `--task
    /// detection` run, a RAM++ or RAM `.pth` of recognize-anything's (or a Hugging Face
    /// OWL-ViT/OWLv2 folder, with --data).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Keep tags or boxes whose score is at least this [default: each tag's own threshold for
    /// RAM++ and RAM, 0.5 for other taggers, 0.1 for boxes].
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Keep at most this many tags (or boxes) per image, the most probable first [default:
    /// all tags, 100 boxes].
    #[arg(long, value_name = "K", value_parser = positive_usize)]
    pub top_k: Option<usize>,
    /// A detector's images with the boxes kept drawn on them, with class and score, as PNGs
    /// in this folder (named as the images, their folders kept).
    #[arg(long, value_name = "DIR")]
    pub draw: Option<PathBuf>,
    /// The tag names of a RAM++/RAM/Tag2Text `.pth` --model, one per line [default:
    /// ram_tag_list.txt beside it; Tag2Text's tag2text_ori_tag_list.txt].
    #[arg(long, value_name = "FILE")]
    pub model_tags: Option<PathBuf>,
    /// The tags a RAM++/RAM predicts, one per line, instead of its own: open-set tagging
    /// without training; tags it lacks are embedded by --teacher from --tag-descriptions.
    #[arg(long, value_name = "FILE")]
    pub tags: Option<PathBuf>,
    /// Descriptions of the --tags a RAM++/RAM lacks: JSON, tag -> list of descriptions (or
    /// RAM++'s LLM tag-description files); without them, prompt templates.
    #[arg(long, value_name = "FILE")]
    pub tag_descriptions: Option<PathBuf>,
    /// bert-base-uncased's tokenizer (`vocab.txt` or `tokenizer.json`) for a RAM `.pth`'s
    /// captions; a folder saved by a run that trained `t2t` holds its own.
    #[arg(long, value_name = "DIR")]
    pub text_tokenizer: Option<PathBuf>,
    /// The CLIP folder that embeds a RAM++/RAM's new tags (the teacher it was trained with).
    #[arg(long, value_name = "DIR")]
    pub teacher: Option<PathBuf>,
    /// Caption every image from these tags, comma-separated (`dog,grass`), instead of from
    /// the tags it kept: Tag2Text's captioning from a person's tags (RAM's too).
    #[arg(long, value_name = "TAGS")]
    pub caption_tags: Option<String>,
    /// The file to write: for tags, one `{"image": ..., "tags": [{"tag": ..., "score": ...}]}`
    /// line per image (JSONL); for boxes, a COCO results list (JSON) on the images `trainer
    /// eval` evaluates (the run's, or those of --data).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// `auto` (CUDA when libtorch sees a GPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: Device,
}

pub fn positive_u64(text: &str) -> Result<u64, String> {
    match text.parse::<i128>() {
        Ok(value) if value >= 1 && value <= u64::MAX as i128 => Ok(value as u64),
        Ok(_) => Err("must be a positive whole number".into()),
        Err(_) => Err("expected a positive whole number".into()),
    }
}

/// A duration as seconds (`3600`) or hours, minutes and seconds (`2h30m`, `90m`, `45s`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || format!("`{text}`: expected seconds or a duration such as 2h30m, 90m or 45s");
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut seconds = 0u64;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(expected()),
        };
        let count: u64 = digits.parse().map_err(|_| expected())?;
        seconds = count.checked_mul(unit).and_then(|s| s.checked_add(seconds)).ok_or_else(expected)?;
        digits.clear();
    }
    if !digits.is_empty() || text.is_empty() {
        return Err(expected());
    }
    Ok(Duration::from_secs(seconds))
}

pub fn positive_usize(text: &str) -> Result<usize, String> {
    positive_u64(text).and_then(|value| usize::try_from(value).map_err(|_| "too large".into()))
}

fn parse_device(text: &str) -> Result<Device, String> {
    match text {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Ok(Device::Cuda(index)),
            _ => Err("expected auto, cpu, cuda or cuda:N".into()),
        },
    }
}

/// Exit codes: 0 success, 1 a run that failed, 2 bad command-line usage, 3 a policy that
/// trapped or decided something invalid, 4 a run that diverged (the divergence guard).
pub const EXIT_FAILURE: u8 = 1;
const DEFAULT_BATCH_SIZE: usize = 256;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_POLICY_FAULT: u8 = 3;
pub const EXIT_DIVERGED: u8 = 4;

/// Runs the command line given to the process.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            eprintln!("{}", first_paragraph(&err.to_string()));
            return ExitCode::from(EXIT_USAGE);
        }
        Err(help_or_version) => {
            let _ = help_or_version.print();
            return ExitCode::SUCCESS;
        }
    };
    let outcome = match cli.command {
        Command::CheckPolicy(args) => return run_check_policy(args),
        Command::Policies(args) => return run_policies(args),
        Command::Data(DataCommand::Check(args)) => return run_data_check(args),
        Command::Data(DataCommand::Convert(args)) => run_data_convert(args),
        Command::Data(DataCommand::Split(args)) => run_data_split(args),
        Command::Simulate(args) => run_simulate(args),
        Command::Train(args) => return run_train_command(*args),
        Command::Sweep(args) => return run_sweep_command(args),
        Command::Eval(args) => run_eval(*args),
        Command::Embed(args) => run_embed(args),
        Command::Predict(args) => run_predict(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

fn run_check_policy(args: CheckPolicyArgs) -> ExitCode {
    let options = CheckOptions {
        cases: args.cases,
        total_steps: args.steps,
        limits: SandboxLimits { fuel_per_call: args.policy_fuel, ..Default::default() },
        seed: args.seed,
        component_cache: PolicyRuntime::default_cache_dir(),
        group_by: args.group_by,
    };
    match check_policy(&args.policy, &options) {
        Ok(report) => {
            println!(
                "check-policy `{}`: {} streams of up to {} steps: never traps, decides validly, is deterministic, \
                 restores its saved state exactly; most fuel in one call {} of {}",
                report.policy, report.cases, args.steps, report.max_fuel, args.policy_fuel
            );
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `trainer policies [NAME]`: the built-in policies, documented from their own source.
fn run_policies(args: PoliciesArgs) -> ExitCode {
    use crate::policy::builtin;
    match args.name {
        None => print!("{}", builtin::catalogue()),
        Some(name) => match builtin::find(&name) {
            Some(policy) => println!("{}", policy.doc),
            None => {
                eprintln!("error: no built-in policy `{name}` (built-in: {})", builtin::names());
                return ExitCode::from(EXIT_FAILURE);
            }
        },
    }
    ExitCode::SUCCESS
}

fn run_data_convert(args: DataConvertArgs) -> Result<(), EngineError> {
    use crate::data::detection::{read_detection_part, write::write_set, yolo};
    let source = &args.set;
    let parts = match source.part {
        Some(part) => vec![part],
        None if DetectionFormat::of(&source.data) == Some(DetectionFormat::Yolo) => {
            [Part::Train, Part::Val, Part::Test]
                .into_iter()
                .filter(|&part| yolo::has_part(&source.data, part))
                .collect()
        }
        None => vec![Part::Train],
    };
    for part in parts {
        let set = read_detection_part(&source.data, part, source.images.as_deref(), false)?;
        let written = write_set(&set, args.to, &args.out, part)?;
        let crowds = match written.crowds_left_out {
            0 => String::new(),
            n => format!("; {n} crowd boxes left out, which the format has no flag for"),
        };
        println!(
            "{}: {} images, {} boxes written as {} {}: --data {}{crowds}",
            source.data.display(),
            written.images,
            written.boxes,
            format!("{:?}", args.to).to_lowercase(),
            part.name(),
            written.data.display()
        );
    }
    Ok(())
}

fn run_data_check(args: DataCheckArgs) -> ExitCode {
    use crate::data::detection::check::{CheckOptions, check_set, summary, write_report};
    let options = CheckOptions { min_box: args.min_box, duplicate_iou: args.duplicate_iou, workers: default_workers() };
    let part = args.set.part.unwrap_or(Part::Train);
    let checked = check_set(&args.set.data, part, args.set.images.as_deref(), &options)
        .and_then(|report| write_report(&report, &args.out).map(|files| (report, files)));
    match checked {
        Ok((report, files)) => {
            print!("{}", summary(&report));
            let files: Vec<String> = files.iter().map(|file| file.display().to_string()).collect();
            println!("wrote {}", files.join(", "));
            if report.errors > 0 { ExitCode::from(EXIT_FAILURE) } else { ExitCode::SUCCESS }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run_data_split(args: DataSplitArgs) -> Result<(), EngineError> {
    use crate::data::detection::read_detection_part;
    use crate::data::detection::split::{Grouping, class_table, divided, group_keys, stratified_parts, write_parts};
    let fractions = match args.fractions[..] {
        [train, val] => [train, val, 0.0],
        [train, val, test] => [train, val, test],
        _ => return Err(EngineError::Config("--fractions: two or three numbers, train,val[,test]".into())),
    };
    if fractions.iter().any(|f| !(0.0..=1.0).contains(f)) || (fractions.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
        return Err(EngineError::Config(format!("--fractions {fractions:?}: each between 0 and 1, adding up to 1")));
    }
    let source = &args.set;
    let set = read_detection_part(&source.data, source.part.unwrap_or(Part::Train), source.images.as_deref(), false)?;
    let groups = match &args.group {
        Some(text) => {
            let grouping =
                Grouping::parse(text).map_err(|problem| EngineError::Config(format!("--group {text}: {problem}")))?;
            group_keys(&set, &source.data, &grouping)?
        }
        None => vec![None; set.samples.len()],
    };
    let parts = stratified_parts(&set, &groups, &fractions, args.seed);
    let sets = divided(&set, &parts);
    print!("{}", class_table(&sets, &set.categories));
    for written in write_parts(&sets, args.to, &args.out)? {
        println!("{} images, {} boxes: --data {}", written.images, written.boxes, written.data.display());
    }
    Ok(())
}

fn run_simulate(args: SimulateArgs) -> Result<(), EngineError> {
    let trace = match &args.trace {
        Some(run_dir) => Trace::Recorded(run_dir.clone()),
        None => Trace::Synthetic(SyntheticCurve {
            steps: args.steps,
            steps_per_epoch: args.steps_per_epoch,
            losses: args.losses.clone(),
            eval_every: args.eval_every,
            groups: args
                .groups
                .clone()
                .unwrap_or_else(|| clip::TOWERS.iter().chain(&clip::HEADS).map(|name| name.to_string()).collect()),
            lr: args.lr,
            seed: args.seed,
        }),
    };
    let options = SimulateOptions {
        policies: (!args.policy.is_empty()).then_some(args.policy),
        shadow_policies: (!args.shadow_policy.is_empty()).then_some(args.shadow_policy),
        trace,
        out: args.out,
        policy_fuel: args.policy_fuel,
        policy_cache: PolicyRuntime::default_cache_dir(),
    };
    let outcome = simulate(&options)?;
    match &outcome.stopped {
        Some((step, policy, reason)) => println!("`{policy}` stops the run after step {step}: {reason}"),
        None => println!("no policy stops the run in {} steps", outcome.steps),
    }
    for (shadow, differing) in &outcome.shadows {
        println!(
            "shadow `{shadow}`: its knobs differ from the run's at {differing} of {} steps (decisions.jsonl has both)",
            outcome.steps
        );
    }
    println!("decisions: {}", outcome.decisions.display());
    let plots: Vec<String> = outcome.plots.iter().map(|p| p.display().to_string()).collect();
    println!("plots: {}", plots.join(", "));
    Ok(())
}

/// `trainer sweep`: the search, then what it found.
fn run_sweep_command(args: SweepArgs) -> ExitCode {
    let python = args
        .python
        .or_else(|| std::env::var_os("TRAINER_PYTHON").map(PathBuf::from))
        .or_else(|| option_env!("TRAINER_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let request = SweepRequest { spec: args.spec, run_dir: args.resume.unwrap_or(args.run_dir), python };
    let (end, sweep) = match run_sweep(&request, &TrainCommandFlags) {
        Ok(ended) => ended,
        Err(err) => {
            eprintln!("error: {err}");
            let usage = matches!(err, SweepError::Spec(_) | SweepError::Refused(_));
            return ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILURE });
        }
    };
    if end == SweepEnd::SpecRefused {
        return ExitCode::from(EXIT_USAGE);
    }
    let reported = Study::read(&sweep.run_dir).map_err(ResultsError::from).and_then(|study| {
        print!("{}", aligned(&study.table(&sweep.space)));
        println!("{} trials: {}", study.trials.len(), study.state_counts());
        if let Some(best) = study.best() {
            let place = best.run_dir.as_deref().map(|dir| format!(": {}", dir.display())).unwrap_or_default();
            println!("best: trial {:04}, {} {}{place}", best.number, study.metric, best.value.unwrap_or(f64::NAN));
        }
        write_results(&study, &sweep)
    });
    match reported {
        Ok(files) => {
            let files: Vec<String> = files.iter().map(|file| file.display().to_string()).collect();
            println!("wrote {}", files.join(", "));
        }
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    if end == SweepEnd::Interrupted {
        println!(
            "interrupted: the trials in flight checkpointed; continue with `trainer sweep --resume {}`",
            request.run_dir.display()
        );
        return ExitCode::from(130);
    }
    ExitCode::SUCCESS
}

/// `trainer train`'s flags, as a sweep's spec names them.
struct TrainCommandFlags;

impl TrainFlags for TrainCommandFlags {
    fn has_flag(&self, flag: &str) -> bool {
        use clap::CommandFactory;
        let command = Cli::command();
        command.find_subcommand("train").is_some_and(|train| {
            train.get_arguments().any(|arg| arg.get_long().is_some_and(|long| flag.strip_prefix("--") == Some(long)))
        })
    }

    fn given_again_on_resume(&self, flag: &str) -> bool {
        EXECUTION_FLAGS.contains(&flag)
    }

    fn parse(&self, args: &[String]) -> Result<(), String> {
        let line = ["trainer", "train"].into_iter().map(String::from).chain(args.iter().cloned());
        Cli::try_parse_from(line)
            .map(|_| ())
            .map_err(|err| first_paragraph(&err.to_string()).trim_start_matches("error: ").to_string())
    }
}

/// `trainer train`: one process, one rank of a launched data-parallel run, or (with
/// `--nproc`) the launcher of local ranks.
fn run_train_command(args: TrainArgs) -> ExitCode {
    let failed = |err: EngineError| {
        eprintln!("error: {}", one_line(&err));
        ExitCode::from(exit_code(&err))
    };
    if args.dry_run {
        return run_dry_run(args).map_or_else(failed, |()| ExitCode::SUCCESS);
    }
    let launch = match Launch::from_env() {
        Ok(launch) => launch,
        Err(err) => return failed(DistributedError::from(err).into()),
    };
    match (args.nproc, &launch) {
        (Some(nproc), None) if nproc > 1 => {
            if let Err(err) = check_batch_splits(args.batch_size.unwrap_or(DEFAULT_BATCH_SIZE), nproc) {
                return failed(err);
            }
            let arguments: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            // The ranks share this claim on the run folder, held until the last one ends.
            let run_dir = args.resume.clone().unwrap_or_else(|| args.run_dir.clone());
            let claim = match RunLock::for_command(&run_dir, args.resume.is_some()) {
                Ok(claim) => claim,
                Err(err) => return failed(err),
            };
            let shared = match claim.as_ref().map(RunLock::share_with_children).transpose() {
                Ok(shared) => shared,
                Err(err) => return failed(err),
            };
            return match spawn_local(nproc, &arguments, Duration::from_secs(60), shared.as_slice()) {
                Ok(status) if status.success() => ExitCode::SUCCESS,
                Ok(status) => ExitCode::from(status.code().map_or(EXIT_FAILURE, |code| code as u8)),
                Err(err) => failed(DistributedError::from(err).into()),
            };
        }
        (Some(nproc), Some(launch)) if launch.world_size != nproc => {
            return failed(EngineError::Config(format!(
                "--nproc {nproc}: the launcher started WORLD_SIZE={} processes; give one or the other",
                launch.world_size
            )));
        }
        _ => {}
    }
    let timeout = Duration::from_secs(args.dist_timeout.unwrap_or(1800));
    let mut args = args;
    let team = match launch {
        Some(launch) => {
            // Each process of a machine trains on its own GPU, as torchrun's LOCAL_RANK says.
            if args.device.is_cuda() {
                args.device = Device::Cuda(launch.local_rank);
            }
            match Team::join(&launch, timeout, args.device) {
                Ok(team) => team,
                Err(err) => return failed(err.into()),
            }
        }
        None => Team::solo(),
    };
    let leader = team.is_leader();
    match run_train(args, Arc::new(team)) {
        Ok(outcome) => {
            if leader {
                report_outcome(&outcome);
            }
            ExitCode::SUCCESS
        }
        Err(err) => failed(err),
    }
}

/// The flags of `trainer train` that say how this process trains, not what the run is
/// (`run_setup` reads them): run.json does not keep them, so a resumed run is given them again.
const EXECUTION_FLAGS: [&str; 5] = ["--device", "--workers", "--grad-checkpointing", "--nproc", "--dist-timeout"];

/// The options and the execution of the run `args` asks for, trained by `team`.
fn run_setup(args: &TrainArgs, team: Arc<Team>) -> (RunOptions, Execution) {
    let options = RunOptions {
        run_dir: args.resume.clone().unwrap_or_else(|| args.run_dir.clone()),
        device: args.device,
        overwrite: args.overwrite,
        pause_after_steps: args.pause_after_steps,
        policy_cache: PolicyRuntime::default_cache_dir(),
        time_limit: args.time_limit,
        team,
    };
    let execution = Execution {
        workers: args.workers.unwrap_or_else(default_workers),
        grad_checkpointing: args.grad_checkpointing,
    };
    (options, execution)
}

fn run_train(args: TrainArgs, team: Arc<Team>) -> Result<TrainOutcome, EngineError> {
    let (options, execution) = run_setup(&args, team);
    if args.resume.is_some() {
        let mut fixed = vec![
            ("--batch-size", args.batch_size.is_some()),
            ("--seed", args.seed.is_some()),
            ("--lr", args.lr.is_some()),
            ("--weight-decay", args.weight_decay.is_some()),
            ("--eval-every", args.eval_every.is_some()),
            ("--histograms", args.histograms.is_some()),
            ("--checkpoint-every", args.checkpoint_every.is_some()),
            ("--policy-fuel", args.policy_fuel.is_some()),
            ("--best-metric", args.best_metric.is_some()),
            ("--snapshots", args.snapshots.is_some()),
            ("--task", args.task.is_some()),
        ];
        fixed.extend(args.task_args.given().into_iter().map(|flag| (flag, true)));
        if let Some((flag, _)) = fixed.iter().find(|(_, given)| *given) {
            return Err(EngineError::Config(format!(
                "{flag}: a resumed run keeps its saved settings (see its run.json)"
            )));
        }
        let policies = (!args.policy.is_empty()).then_some(args.policy);
        let resume = Resume {
            policies,
            swap_policies: args.swap_policies,
            shadow_policies: (!args.shadow_policy.is_empty()).then_some(args.shadow_policy),
            steps: args.steps,
            keep_checkpoints: args.keep_checkpoints,
            max_skipped_steps: args.max_skipped_steps,
            data_changed: args.data_changed,
        };
        return tasks::resume(&options, &resume, execution);
    }
    let (run, task) = new_run_config(args)?;
    tasks::train(&run, &task, &options, execution)
}

/// The settings of a new run from its command line.
fn new_run_config(args: TrainArgs) -> Result<(RunConfig, TaskConfig), EngineError> {
    let task = args.task_args.config(args.task.unwrap_or_default())?;
    let run = RunConfig {
        policies: args.policy,
        shadow_policies: args.shadow_policy,
        snapshots: args.snapshots.unwrap_or(DEFAULT_SNAPSHOTS),
        steps: args.steps.unwrap_or(1000),
        batch_size: args.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
        seed: args.seed.unwrap_or(0),
        lr: args.lr.unwrap_or(2e-3),
        weight_decay: args.weight_decay.unwrap_or(0.1),
        best_metric: args.best_metric,
        eval_every: args.eval_every.unwrap_or(0),
        checkpoint_every: args.checkpoint_every.unwrap_or(0),
        histogram_every: args.histograms.unwrap_or(0),
        policy_fuel: args.policy_fuel.unwrap_or(50_000_000),
        max_skipped_steps: args.max_skipped_steps.unwrap_or(DEFAULT_MAX_SKIPPED_STEPS),
        keep_checkpoints: args.keep_checkpoints.unwrap_or(DEFAULT_KEEP_CHECKPOINTS),
    };
    Ok((run, task))
}

/// `trainer train --dry-run`: the plan of the run, as JSON on stdout.
fn run_dry_run(args: TrainArgs) -> Result<(), EngineError> {
    let (options, execution) = run_setup(&args, Arc::new(Team::solo()));
    if let Some(nproc) = args.nproc {
        check_batch_splits(args.batch_size.unwrap_or(DEFAULT_BATCH_SIZE), nproc)?;
    }
    let (run, task) = new_run_config(args)?;
    let plan = tasks::plan(&run, &task, &options, execution)?;
    println!("{}", serde_json::to_string(&plan).expect("a plan serializes"));
    Ok(())
}

fn report_outcome(outcome: &TrainOutcome) {
    let loss = outcome.final_loss.map(|l| format!("{l:.4}")).unwrap_or("-".into());
    println!("trained to step {} in {:.1} s, final loss {loss}", outcome.steps_done, outcome.train_seconds);
    if let Some((policy, reason)) = &outcome.stopped_by {
        println!("stopped early by `{policy}`: {reason}");
    }
    if outcome.skipped_steps > 0 {
        println!("{} steps skipped: their loss or gradient norm was not finite", outcome.skipped_steps);
    }
    if let Some(path) = &outcome.paused_at {
        println!("paused; checkpoint {}; continue with --resume", path.display());
    }
    if let Some(scores) = &outcome.final_scores {
        print_scores(scores);
    }
}

fn print_scores(scores: &Scores) {
    let values: Vec<String> = scores
        .names
        .iter()
        .zip(&scores.values)
        .map(|(name, value)| {
            if name.contains("loss") {
                format!("{name} {value:.4}")
            } else if *value == COCO_MISSING {
                // pycocotools' mark for an area range without ground truth.
                format!("{name} -")
            } else {
                format!("{name} {:.2}%", value * 100.0)
            }
        })
        .collect();
    println!("evaluation on {} {} images: {}", scores.images, scores.split, values.join(", "));
    if let Some(rows) = scores.tables.get(detection::PER_CLASS).and_then(|table| table.as_array()) {
        print_per_class(rows);
    }
}

/// A detector's per-class table, a line per class: AP, AP50, and at IoU .5 precision, recall
/// and F1 of the boxes at or above the score threshold; `-` where a figure is undefined.
fn print_per_class(rows: &[serde_json::Value]) {
    let threshold = rows.first().and_then(|row| row["score_threshold"].as_f64()).unwrap_or_default();
    let width = rows.iter().filter_map(|row| row["class"].as_str()).map(str::len).max().unwrap_or(5).max(5);
    println!(
        "{:width$}  {:>6}  {:>6}  {:>9}  {:>6}  {:>6}  {:>6}  {:>12}   (precision, recall, F1: IoU .5, score >= {threshold})",
        "class", "AP", "AP50", "precision", "recall", "F1", "boxes", "ground truth"
    );
    let percent =
        |value: &serde_json::Value| value.as_f64().map_or_else(|| "-".to_string(), |v| format!("{:.1}%", v * 100.0));
    for row in rows {
        println!(
            "{:width$}  {:>6}  {:>6}  {:>9}  {:>6}  {:>6}  {:>6}  {:>12}",
            row["class"].as_str().unwrap_or("?"),
            percent(&row["ap"]),
            percent(&row["ap50"]),
            percent(&row["precision"]),
            percent(&row["recall"]),
            percent(&row["f1"]),
            row["detections"].as_u64().unwrap_or_default(),
            row["ground_truth"].as_u64().unwrap_or_default(),
        );
    }
}

fn run_eval(args: EvalArgs) -> Result<(), EngineError> {
    let request = EvalRequest {
        model: args.model,
        task: args.task,
        data: args.data,
        images: args.images,
        val_data: args.val_data,
        tags: args.tags,
        skip_bad_samples: args.skip_bad_samples,
        seed: args.seed,
        device: args.device,
        workers: args.workers.unwrap_or_else(default_workers),
    };
    let scores = evaluate(&request)?;
    print_scores(&scores);
    if let Some(file) = &args.calibrate_thresholds {
        let count = write_calibrated_thresholds(&scores, file)?;
        println!("thresholds: {count} tags at their F1-best on {} images: {}", scores.images, file.display());
    }
    if let Some(out) = &args.out {
        write_json(out, &scores.record())?;
        println!("metrics: {}", out.display());
    }
    Ok(())
}

/// Writes the F1-best threshold of each tag of the per-tag table of `scores` to `file`, one
/// per line; returns how many.
fn write_calibrated_thresholds(scores: &Scores, file: &Path) -> Result<usize, EngineError> {
    let rows = scores.tables.get(tagging::PER_TAG).and_then(|table| table.as_array()).ok_or_else(|| {
        EngineError::Config("--calibrate-thresholds: only a tagger's evaluation has per-tag thresholds".into())
    })?;
    let lines: Vec<String> =
        rows.iter().map(|row| format!("{}", row["f1_best_threshold"].as_f64().unwrap_or(1.0))).collect();
    std::fs::write(file, lines.join("\n") + "\n").map_err(FileError::io(file))?;
    Ok(lines.len())
}

fn run_embed(args: EmbedArgs) -> Result<(), EngineError> {
    let request = EmbedRequest {
        model: args.model,
        images: args.images.source(),
        texts: args.texts,
        out: args.out,
        device: args.device,
    };
    let embedded = embed(&request)?;
    println!(
        "{} images and {} texts embedded ({} dimensions): {}",
        embedded.images,
        embedded.texts,
        embedded.dimension,
        request.out.display()
    );
    Ok(())
}

fn run_predict(args: PredictArgs) -> Result<(), EngineError> {
    if kind_of_folder(&args.model)? == TaskKind::Detection {
        return run_predict_boxes(args);
    }
    let request = PredictRequest {
        model: args.model,
        images: args.images.source(),
        out: args.out,
        threshold: args.threshold,
        top_k: args.top_k,
        open_set: tagging::ram::OpenSet {
            model_tags: args.model_tags,
            tags: args.tags,
            tag_descriptions: args.tag_descriptions,
            teacher: args.teacher,
            text_tokenizer: args.text_tokenizer,
            caption_tags: args.caption_tags,
        },
        device: args.device,
    };
    let images = predict(&request)?;
    println!("tags of {images} images: {}", request.out.display());
    Ok(())
}

fn run_predict_boxes(args: PredictArgs) -> Result<(), EngineError> {
    if args.images.images.is_some() {
        return Err(EngineError::Config(
            "--images: a detector predicts on a COCO file or manifest (--data), whose categories are its queries"
                .into(),
        ));
    }
    let evaluation = EvalRequest {
        model: args.model,
        task: Some(TaskKind::Detection),
        data: args.images.data,
        images: args.images.images_of_data,
        val_data: None,
        tags: None,
        skip_bad_samples: false,
        seed: None,
        device: args.device,
        workers: default_workers(),
    };
    let request = DetectionPredictRequest {
        evaluation,
        out: args.out,
        threshold: args.threshold.unwrap_or(detection::DEFAULT_THRESHOLD),
        top_k: args.top_k.unwrap_or(detection::DETECTIONS_PER_IMAGE),
        draw: args.draw,
    };
    let (images, boxes) = detection::predict(&request)?;
    println!("{boxes} boxes on {images} images: {}", request.out.display());
    if let Some(draw) = &request.draw {
        println!("drawn: {}", draw.display());
    }
    Ok(())
}

fn exit_code(err: &EngineError) -> u8 {
    match err {
        EngineError::Policy(PolicyError::Trap { .. } | PolicyError::InvalidDecision { .. })
        | EngineError::PolicyFault { .. }
        | EngineError::Distributed(DistributedError::PeerPolicyFault(_)) => EXIT_POLICY_FAULT,
        EngineError::Diverged(_) => EXIT_DIVERGED,
        _ => EXIT_FAILURE,
    }
}

/// The error and its causes on one line.
fn one_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(" ")
}

/// clap's message up to its first blank line (the error, not the usage text), as one line.
fn first_paragraph(message: &str) -> String {
    message.lines().take_while(|line| !line.trim().is_empty()).map(str::trim).collect::<Vec<_>>().join(" ")
}
