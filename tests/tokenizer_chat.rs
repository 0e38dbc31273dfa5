//! The Rust chat templates on the real Qwen tokenizer
//! (`../shared/data/qwen-tokenizer/tokenizer.json`; skipped when absent).

use std::path::{Path, PathBuf};

use onelayer::chat::{ChatTemplate, Message, QWEN25_DEFAULT_SYSTEM};
use onelayer::tokenizer::Tokenizer;

const IM_START: u32 = 151644;
const IM_END: u32 = 151645;
const ENDOFTEXT: u32 = 151643;
const THINK: u32 = 151667;
const END_THINK: u32 = 151668;

fn tokenizer_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/qwen-tokenizer/tokenizer.json")
}

fn load() -> Option<Tokenizer> {
    let path = tokenizer_path();
    if !path.is_file() {
        eprintln!("skipping: {} not found", path.display());
        return None;
    }
    Some(Tokenizer::from_file(&path).expect("load the Qwen tokenizer"))
}

#[test]
fn special_tokens_are_single_ids() {
    let Some(tok) = load() else { return };
    for (text, id) in [
        ("<|im_start|>", IM_START),
        ("<|im_end|>", IM_END),
        ("<|endoftext|>", ENDOFTEXT),
        ("<think>", THINK),
        ("</think>", END_THINK),
    ] {
        assert_eq!(tok.token_id(text), Some(id), "{text}");
        assert_eq!(tok.encode(text).unwrap(), vec![id], "{text}");
    }
    assert_eq!(tok.vocab_size(), 151_669);
    assert!(tok.encode("").unwrap().is_empty());
}

#[test]
fn known_encoding() {
    let Some(tok) = load() else { return };
    // From ../shared/data/README.md.
    let ids = tok
        .encode("<|im_start|>user\nWhat is 2+3?<|im_end|>")
        .unwrap();
    assert_eq!(
        ids,
        vec![151644, 872, 198, 3838, 374, 220, 17, 10, 18, 30, 151645]
    );
}

#[test]
fn qwen3_prompt_without_thinking() {
    let Some(tok) = load() else { return };
    let messages = [
        Message::system("You are a careful math tutor."),
        Message::user("What is 2+3?"),
    ];
    let text = ChatTemplate::Qwen3.render(&messages, true, false).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a careful math tutor.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+3?<|im_end|>\n\
         <|im_start|>assistant\n<think>\n\n</think>\n\n"
    );
    let ids = tok.encode(&text).unwrap();
    assert_eq!(ids[0], IM_START);
    let think = ids.iter().position(|&i| i == THINK).expect("<think> id");
    let end = ids
        .iter()
        .position(|&i| i == END_THINK)
        .expect("</think> id");
    assert!(think < end && end + 2 >= ids.len(), "{ids:?}");
    assert_eq!(ids.iter().filter(|&&i| i == IM_START).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == IM_END).count(), 2);
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
}

#[test]
fn qwen25_default_system_prompt() {
    let Some(tok) = load() else { return };
    let template = ChatTemplate::Qwen25 {
        default_system: Some(QWEN25_DEFAULT_SYSTEM.into()),
    };
    let text = template.prompt(None, "Hi", true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&text).unwrap();
    assert_eq!(ids[0], IM_START);
    assert!(!ids.contains(&THINK));
    assert_eq!(
        *ids.last().unwrap(),
        198,
        "ends with a newline token: {ids:?}"
    );
    let plain = tok.decode(&ids, true).unwrap();
    assert!(
        !plain.contains("<|im_start|>") && plain.contains("Alibaba Cloud"),
        "{plain}"
    );
}

#[test]
fn round_trip_with_non_ascii() {
    let Some(tok) = load() else { return };
    for text in [
        "Héllo, wörld! 你好，世界。 Привет 👋🏽 ∑x² = 42\n\ttabs  and  spaces",
        "<think>\nreasoning…\n</think>\n\nThe answer is #### 1,234.<|im_end|>",
        " leading space and trailing \n\n",
    ] {
        let ids = tok.encode(text).unwrap();
        assert!(!ids.is_empty());
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    let ids = tok.encode("ok<|im_end|><|endoftext|>").unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "ok");
}
