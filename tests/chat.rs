//! The interactive chat through a pseudo-terminal, as a user types it: parameters set with
//! Ollama's commands, two turns where the second finds the first in the KV cache, Ctrl-C in
//! the middle of an answer (the chat goes on), /bye.

mod common;

use common::*;
use rexpect::process::wait::WaitStatus;
use rexpect::session::spawn_command;

/// The (prompt tokens, reused tokens) of the summary line after an answer.
fn summary(p: &mut rexpect::session::PtySession) -> (u64, u64) {
    let (_, m) = p
        .exp_regex(r"prompt \d+ tok, \d+ reused")
        .expect("the summary line after an answer");
    let n: Vec<u64> = m
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    (n[0], n[1])
}

#[test]
fn a_chat_on_a_terminal_keeps_its_turns_and_survives_ctrl_c() {
    fixture();
    let mut cmd = gbx();
    // The pty rexpect opens is the child's stdin (gbx() would give it /dev/null).
    cmd.args(["smollm2:135m", "--no-color"])
        .stdin(std::process::Stdio::inherit());
    let mut p = spawn_command(cmd, Some(180_000)).unwrap();
    p.exp_string("/? for help").unwrap();
    p.send_line("/set parameter temperature 0").unwrap();
    p.exp_string("Set parameter 'temperature' to '0'").unwrap();
    p.send_line("/set parameter top_p 3").unwrap();
    p.exp_string("error: invalid parameter: top_p").unwrap();
    p.send_line("/set parameter num_predict 24").unwrap();
    p.exp_string("Set parameter 'num_predict'").unwrap();
    p.send_line("My name is Ada. Say hello to me.").unwrap();
    let (n1, reused1) = summary(&mut p);
    assert_eq!(reused1, 0, "the first turn starts from an empty cache");
    p.send_line("What is my name?").unwrap();
    let (n2, reused2) = summary(&mut p);
    assert!(
        n2 > n1,
        "the second prompt holds the first turn ({n1} -> {n2} tokens)"
    );
    assert!(
        reused2 >= n1,
        "the first turn came from the cache ({reused2} of {n2})"
    );
    p.send_line("/show info").unwrap();
    p.exp_string("2 turns held").unwrap();
    // Ctrl-C stops the answer, not the chat.
    p.send_line("/set parameter num_predict -1").unwrap();
    p.exp_string("Set parameter").unwrap();
    p.send_line("Write a very long story about the sea, with many chapters.")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    p.send_control('c').unwrap();
    p.exp_string("(stopped)").unwrap();
    p.send_line("/clear").unwrap();
    p.exp_string("Cleared").unwrap();
    p.send_line("/bye").unwrap();
    p.exp_eof().unwrap();
    assert!(matches!(
        p.process.wait().unwrap(),
        WaitStatus::Exited(_, 0)
    ));
}
