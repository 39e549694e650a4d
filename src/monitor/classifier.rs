//! The cold-start gear: a transparent score of how hard a prompt looks, used until the
//! entropy window fills. Every point of the score is a visible feature of the text.

use serde::Serialize;

use crate::gearbox::Gear;

const CODE_WORDS: &[&str] = &[
    "fn",
    "def",
    "class",
    "return",
    "import",
    "include",
    "struct",
    "impl",
    "let",
    "const",
    "var",
    "function",
    "while",
    "for",
    "if",
    "else",
    "void",
    "int",
    "public",
    "static",
    "async",
    "await",
    "lambda",
    "select",
    "from",
    "where",
    "code",
    "program",
    "function",
    "compile",
    "debug",
    "algorithm",
    "python",
    "rust",
    "javascript",
    "sql",
];
const MATH_WORDS: &[&str] = &[
    "solve",
    "calculate",
    "compute",
    "prove",
    "equation",
    "integral",
    "derivative",
    "sum",
    "product",
    "probability",
    "how many",
    "how much",
    "percent",
    "average",
    "total",
    "theorem",
    "factor",
    "multiply",
    "divide",
    "square",
];
const EASY_WORDS: &[&str] = &[
    "hello",
    "hi",
    "hey",
    "thanks",
    "thank you",
    "say",
    "greet",
    "goodbye",
    "bye",
    "repeat",
];

/// The features and the score they add up to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PromptScore {
    pub math: f64,
    pub code: f64,
    pub length: f64,
    pub word_length: f64,
    pub easy: f64,
    pub total: f64,
    pub gear: Gear,
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Scores a prompt: ≥ 2.0 → high, ≤ 0.5 → low, otherwise mid.
pub fn classify(prompt: &str) -> PromptScore {
    let lower = prompt.to_lowercase();
    let ws = words(prompt);
    let n_words = ws.len().max(1) as f64;
    let math_symbols = prompt
        .chars()
        .filter(|c| "+-*/=^<>%√∑∫≤≥×÷".contains(*c))
        .count() as f64;
    let digits = prompt.chars().filter(char::is_ascii_digit).count() as f64;
    let math_words = MATH_WORDS.iter().filter(|w| lower.contains(*w)).count() as f64;
    let math = (0.5 * math_symbols + 0.2 * digits).min(2.0) + math_words.min(2.0);
    let code_words = ws
        .iter()
        .filter(|w| CODE_WORDS.contains(&w.as_str()))
        .count() as f64;
    let code_symbols = prompt.chars().filter(|c| "{}();[]_#`".contains(*c)).count() as f64;
    let code = (0.75 * code_words).min(2.0) + (0.25 * code_symbols).min(1.0);
    let length = ((n_words - 12.0) / 40.0).clamp(0.0, 1.0);
    let mean_len = ws.iter().map(|w| w.chars().count()).sum::<usize>() as f64 / n_words;
    let word_length = ((mean_len - 5.0) / 3.0).clamp(0.0, 1.0);
    let easy = if n_words <= 8.0 {
        EASY_WORDS
            .iter()
            .filter(|w| lower.contains(*w))
            .count()
            .min(2) as f64
            * 0.75
    } else {
        0.0
    };
    // Ordinary text starts at 1.0 (mid); hard features push up, greetings push down.
    let total = 1.0 + math + code + length + word_length - easy;
    let gear = if total >= 2.0 {
        Gear::High
    } else if total <= 0.5 {
        Gear::Low
    } else {
        Gear::Mid
    };
    PromptScore {
        math,
        code,
        length,
        word_length,
        easy,
        total,
        gear,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labelled prompts: (text, expected cold-start gear).
    const LABELLED: &[(&str, Gear)] = &[
        ("Say hello.", Gear::Low),
        ("Hi!", Gear::Low),
        ("Thanks, goodbye!", Gear::Low),
        ("Hello, how are you?", Gear::Low),
        (
            "Write a short poem about autumn leaves falling in the park.",
            Gear::Mid,
        ),
        (
            "What is the capital of France and why is it famous?",
            Gear::Mid,
        ),
        (
            "Tell me a story about a dragon who learns to cook.",
            Gear::Mid,
        ),
        ("Solve for x: 3x + 7 = 22.", Gear::High),
        (
            "Calculate the integral of x^2 * sin(x) from 0 to pi.",
            Gear::High,
        ),
        (
            "If a train travels 120 km in 1.5 hours, how many km does it travel in 4 hours?",
            Gear::High,
        ),
        (
            "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n# make this iterative",
            Gear::High,
        ),
        (
            "Write a Rust function `fn parse(s: &str) -> Result<u32, String>` with tests.",
            Gear::High,
        ),
    ];

    #[test]
    fn labelled_prompts() {
        for (text, want) in LABELLED {
            let s = classify(text);
            assert_eq!(s.gear, *want, "{text:?}: {s:?}");
        }
    }

    #[test]
    fn score_is_the_sum_of_its_features() {
        let s = classify("Compute 17 * 23 + 5 in Python code.");
        assert!(
            (s.total - (1.0 + s.math + s.code + s.length + s.word_length - s.easy)).abs() < 1e-12
        );
        assert!(s.math > 0.0 && s.code > 0.0);
    }
}
