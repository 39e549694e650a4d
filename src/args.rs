//! Command-line spellings the binaries share: llama.cpp's short flags of several letters.

/// llama.cpp spells some flags with one dash and several letters (`-ngl N`, `-ctk q8_0`,
/// `-ctv q8_0`, `-fa on`), which no option parser reads as one flag: they become their long
/// names.
pub fn llama_cpp_spellings(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    const SHORT: [(&str, &str); 4] = [
        ("-ngl", "--n-gpu-layers"),
        ("-ctk", "--cache-type-k"),
        ("-ctv", "--cache-type-v"),
        ("-fa", "--flash-attn"),
    ];
    args.map(|a| {
        let Some(s) = a.to_str() else { return a };
        for (short, long) in SHORT {
            if s == short {
                return long.into();
            }
            if let Some(v) = s.strip_prefix(short).and_then(|r| r.strip_prefix('=')) {
                return format!("{long}={v}").into();
            }
        }
        a
    })
    .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn multi_letter_flags_become_long_ones() {
        let args = [
            "x",
            "-ngl",
            "0",
            "-ctk=q8_0",
            "-ctv",
            "q4_0",
            "-fa",
            "on",
            "-fab",
            "-c",
            "9",
        ];
        let out: Vec<String> = super::llama_cpp_spellings(args.iter().map(Into::into))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            out,
            [
                "x",
                "--n-gpu-layers",
                "0",
                "--cache-type-k=q8_0",
                "--cache-type-v",
                "q4_0",
                "--flash-attn",
                "on",
                "-fab",
                "-c",
                "9"
            ]
        );
    }
}
