//! `sanlb generate` (hidden): man pages and shell completions from the
//! command-line definition, for the Debian package (`cargo xtask package`).

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::args::{Cli, GenerateArgs};

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.man {
        man(dir)?;
    }
    if let Some(dir) = &args.completions {
        completions(dir)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `sanlb.1` and one page per visible subcommand, `sanlb-agent.1`…
fn man(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    let mut pages = vec![("sanlb".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // A one-shot process: the leaked names live until it exits.
        let name: &'static str = format!("sanlb-{}", sub.get_name()).leak();
        pages.push((name.to_owned(), sub.clone().name(name)));
    }
    for (name, cmd) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .with_context(|| format!("rendering {name}.1"))?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `sanlb.bash`, `_sanlb` (zsh), `sanlb.fish`.
fn completions(dir: &Path) -> anyhow::Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "sanlb", dir)
            .with_context(|| format!("writing the {shell} completions into {}", dir.display()))?;
    }
    Ok(())
}
