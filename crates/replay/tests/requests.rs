//! Requests as a server receives them, on the checked-in iteration model, by properties that
//! need no reference: the chat template behaves as Qwen3.6's (thinking on and off, earlier
//! reasoning dropped, the system message first), a prefix the template does not repeat is
//! refused rather than silently prefilled again, and a prompt longer than the model's positions
//! is refused.

use std::path::{Path, PathBuf};

use contract::ComputeDtype;
use neuron::config::Config;
use neuron::model::{Model, Residency};
use neuron::preprocess::{Content, Conversation, GenerationPrompt, Message, Processor, Role};
use neuron::taps::Taps;
use parity::manifest::Manifest;
use replay::{CaseSetup, Mode, Perturbations};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-qwen3.6-27b")
}

fn text(role: Role, text: &str) -> Message {
    Message { role, content: Content::Text(text.to_owned()) }
}

fn render(messages: Vec<Message>, thinking: Option<bool>, prompt: GenerationPrompt) -> String {
    let processor = Processor::from_dir(&model_dir()).unwrap();
    let mut template_args = serde_json::Map::new();
    if let Some(on) = thinking {
        template_args.insert("enable_thinking".into(), on.into());
    }
    processor.prompt.render_conversation(&Conversation { messages, template_args }, prompt).unwrap()
}

#[test]
fn the_chat_template_opens_a_think_block_with_thinking_on_and_an_empty_one_with_it_off() {
    let ask = || vec![text(Role::User, "Hi.")];
    let on = render(ask(), Some(true), GenerationPrompt::Open);
    let off = render(ask(), Some(false), GenerationPrompt::Open);
    let unset = render(ask(), None, GenerationPrompt::Open);
    assert_eq!(on, "<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n<think>\n", "thinking on");
    assert_eq!(off, "<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", "thinking off");
    assert_eq!(unset, "<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n", "enable_thinking not given");
}

#[test]
fn the_chat_template_drops_the_reasoning_of_assistant_turns_before_the_last_user_message() {
    let messages = vec![
        text(Role::System, "Be brief."),
        text(Role::User, "First?"),
        text(Role::Assistant, "<think>\nworking it out\n</think>\n\nOne."),
        text(Role::User, "Second?"),
        text(Role::Assistant, "<think>\nagain\n</think>\n\nTwo."),
    ];
    let rendered = render(messages, Some(true), GenerationPrompt::Closed);
    assert!(rendered.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"), "the system message first:\n{rendered}");
    assert!(
        rendered.contains("<|im_start|>assistant\nOne.<|im_end|>") && !rendered.contains("working it out"),
        "the first reply keeps its answer and loses its reasoning:\n{rendered}"
    );
    assert!(
        rendered.contains("<|im_start|>assistant\n<think>\nagain\n</think>\n\nTwo.<|im_end|>"),
        "the reply after the last user message keeps its reasoning:\n{rendered}"
    );
}

fn tiny_model(max_positions: Option<usize>) -> Model {
    let dir = model_dir();
    let mut config = Config::from_dir(&dir).unwrap();
    if let Some(max) = max_positions {
        config.text_config.max_position_embeddings = max;
    }
    Model::load(&dir, &config, Residency::Resident, ComputeDtype::F32).unwrap()
}

#[test]
fn a_prompt_longer_than_the_models_positions_is_refused_naming_the_limit() {
    let model = tiny_model(None);
    let max = model.config.text_config.max_position_embeddings;
    let err = model.prompt(&vec![1; max + 1], None, &mut Taps::disabled()).map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("the prompt takes {} tokens, more than the model's {max} positions", max + 1)),
        "{err}"
    );
    assert!(err.contains("max_position_embeddings"), "the error names the config field: {err}");
}

#[test]
fn decoding_past_the_models_positions_is_refused_at_the_step_that_would_cross_them() {
    let model = tiny_model(Some(6));
    let mut cache = model.new_cache();
    model.prefill(&[1, 2, 3, 4, 5], None, &mut cache, &mut Taps::disabled()).unwrap();
    model.decode_step(6, &mut cache).expect("the sixth token fits");
    let err = model.decode_step(7, &mut cache).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("takes 7 tokens, more than the model's 6 positions"), "{err}");
}

#[test]
fn a_prefix_the_template_renders_differently_once_continued_is_refused_not_prefilled_again() {
    // An assistant message last in the prefix keeps its think block, which the template drops
    // once a user message follows: nothing cached would be reused.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let case = r#"
[cases.prefix-ending-with-a-reply]
model = "tiny-qwen3.6-27b"
messages = [
    { role = "user", content = "Describe a cat." },
    { role = "assistant", content = "A cat sits on a wooden floor." },
]
prefix_cache = [[{ role = "user", content = "Its colour?" }], [{ role = "user", content = "Its size?" }]]
generate = 1
"#;
    let manifest = Manifest::parse(&format!("{text}{case}"), &path, path.parent().unwrap()).unwrap();
    let setup = CaseSetup::new(manifest.case("prefix-ending-with-a-reply").unwrap(), None).unwrap();
    let model = replay::load_model(&setup).unwrap();
    let run = replay::run_with(&setup, Mode::Continue, &model, &Perturbations::default()).unwrap();
    let failure = run.failure.expect("the run refuses the prefix");
    assert!(
        failure.contains("the prefix is not a prefix of prefix + suffix") && failure.contains("end the prefix with"),
        "{failure}"
    );
}
