//! The packaging under `packaging/` refers to what this repository really builds (no
//! container engine runs here, so the Dockerfiles are checked, not built):
//! - the control-plane image builds the package and profile that exist, ships exactly the
//!   binaries the package declares, runs the server as a non-root user, checks health
//!   with a CLI command that exists, and its build context keeps every workspace member;
//! - the filter image is `FROM scratch` with the module the Makefile builds copied to
//!   `plugin.wasm`, the file name Istio looks for, from the build context it documents;
//! - `make install` installs both binaries from the profile it builds into
//!   `$(DESTDIR)$(PREFIX)/bin`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use portcullis_e2e::{bin, filter_wasm, repo_root};

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The Dockerfile's instructions: continuation lines joined, comments and blanks dropped.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (keyword, rest) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
                out.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// `name = "..."` values of the `[[bin]]` sections of a Cargo.toml.
fn bin_names(manifest: &str) -> BTreeSet<String> {
    manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|section| {
            section
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = ").map(|v| v.trim_matches('"').to_owned()))
        })
        .collect()
}

/// The value after `flag` in a command line.
fn flag_value<'a>(command: &'a str, flag: &str) -> &'a str {
    let mut words = command.split_whitespace();
    words.find(|w| *w == flag).unwrap_or_else(|| panic!("no {flag} in {command}"));
    words.next().unwrap_or_else(|| panic!("{flag} without a value in {command}"))
}

/// An `ARG NAME=default` value.
fn arg_default<'a>(instructions: &'a [(String, String)], name: &str) -> Option<&'a str> {
    instructions.iter().find_map(|(k, v)| (k == "ARG").then(|| v.strip_prefix(&format!("{name}="))).flatten())
}

#[test]
fn control_plane_dockerfile_ships_the_workspace_binaries_as_a_non_root_user() {
    let dockerfile = instructions(&read("packaging/control-plane/Dockerfile"));
    let binaries = bin_names(&read("control-plane/Cargo.toml"));
    assert_eq!(binaries, BTreeSet::from(["portcullis".to_owned(), "portcullis-control-plane".to_owned()]));

    // The build: the package and the profile exist, and what is copied out is every binary.
    let build = dockerfile
        .iter()
        .find(|(k, v)| k == "RUN" && v.contains("cargo build"))
        .map(|(_, v)| v.as_str())
        .expect("no cargo build in the Dockerfile");
    assert!(read("control-plane/Cargo.toml").contains(&format!("name = \"{}\"", flag_value(build, "-p"))));
    let profile = flag_value(build, "--profile");
    assert!(
        read("Cargo.toml").contains(&format!("[profile.{profile}]")),
        "no profile `{profile}` in Cargo.toml"
    );
    assert!(build.contains("--locked"), "the image must build what Cargo.lock pins");
    let copied: BTreeSet<String> = build
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&format!("target/{profile}/")))
        .map(str::to_owned)
        .collect();
    assert_eq!(copied, binaries, "the build stage copies out other binaries than the package has");

    // The runtime: a small base, both binaries on PATH, a non-root user.
    let last_from = dockerfile.iter().rev().find(|(k, _)| k == "FROM").map(|(_, v)| v.as_str()).unwrap();
    let base = last_from.strip_prefix("${").and_then(|v| v.strip_suffix('}')).map_or(last_from, |arg| {
        arg_default(&dockerfile, arg).unwrap_or_else(|| panic!("ARG {arg} has no default"))
    });
    assert!(base.contains("distroless") || base.contains("-slim"), "runtime base {base} is not small");
    assert!(
        dockerfile.iter().any(|(k, v)| k == "COPY" && v.contains("--from=build /out/bin/ /usr/local/bin/")),
        "the binaries are not copied to /usr/local/bin"
    );
    let user = dockerfile.iter().rev().find(|(k, _)| k == "USER").map(|(_, v)| v.as_str()).expect("no USER");
    assert!(!matches!(user.split(':').next(), Some("root" | "0")), "runs as {user}");

    let entrypoint = dockerfile.iter().find(|(k, _)| k == "ENTRYPOINT").map(|(_, v)| v.as_str()).unwrap();
    assert_eq!(entrypoint, r#"["/usr/local/bin/portcullis-control-plane"]"#);

    // The health check is a CLI command that exists, against the address the server listens on.
    let healthcheck = dockerfile.iter().find(|(k, _)| k == "HEALTHCHECK").map(|(_, v)| v.as_str()).unwrap();
    let command = healthcheck.split("CMD").nth(1).unwrap().trim();
    let argv: Vec<String> = serde_json::from_str(command).unwrap();
    assert_eq!(argv[0], "/usr/local/bin/portcullis");
    let help = Command::new(bin("portcullis")).args(&argv[1..]).arg("--help").output().unwrap();
    assert!(help.status.success(), "`portcullis {}` is not a command", argv[1..].join(" "));
    let env =
        dockerfile.iter().filter(|(k, _)| k == "ENV").map(|(_, v)| v.as_str()).collect::<Vec<_>>().join(" ");
    let env = env.replace('=', " ");
    let (listen, url) = (flag_value(&env, "PORTCULLIS_LISTEN"), flag_value(&env, "PORTCULLIS_URL"));
    let port = listen.rsplit(':').next().unwrap();
    assert!(url.ends_with(&format!(":{port}")), "health checks {url}, the server listens on {listen}");
    assert!(dockerfile.iter().any(|(k, v)| k == "EXPOSE" && v == port), "EXPOSE {port} missing");

    // The build context (the repository root) keeps every workspace member.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(ignored.iter().any(|l| l == "target"), "target/ would be sent as build context");
    for member in ["Cargo.toml", "Cargo.lock", "core", "filter", "control-plane", "tests"] {
        assert!(repo_root().join(member).exists(), "{member} missing");
        assert!(!ignored.iter().any(|l| l.trim_matches('/') == member), ".dockerignore drops {member}");
    }
}

#[test]
fn filter_image_holds_the_built_module_as_plugin_wasm() {
    let text = read("packaging/filter/Dockerfile");
    let dockerfile = instructions(&text);
    let keywords: Vec<&str> = dockerfile.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keywords, ["FROM", "COPY"], "the image is one layer on scratch");
    assert_eq!(dockerfile[0].1, "scratch");
    let copy: Vec<&str> = dockerfile[1].1.split_whitespace().collect();
    assert_eq!(copy.len(), 2, "one file: {copy:?}");
    assert_eq!(
        Path::new(copy[1]).file_name().unwrap(),
        "plugin.wasm",
        "Istio reads the file named plugin.wasm"
    );

    // The source is the module `make build-wasm` writes, in the context the file documents.
    let lib_name = read("filter/Cargo.toml")
        .split("[lib]")
        .nth(1)
        .and_then(|s| {
            s.lines().find_map(|l| l.trim().strip_prefix("name = ").map(|v| v.trim_matches('"').to_owned()))
        })
        .unwrap();
    assert_eq!(copy[0], format!("{lib_name}.wasm"));
    let makefile_wasm = read("Makefile")
        .lines()
        .find_map(|l| {
            l.strip_prefix("WASM ").map(|v| v.trim_start_matches([' ', ':', '=']).trim().to_owned())
        })
        .unwrap();
    let context = Path::new(&makefile_wasm)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .replace("$(WASM_TARGET_DIR)", "target/wasm");
    assert_eq!(Path::new(&makefile_wasm).file_name().unwrap().to_str().unwrap(), copy[0]);
    assert!(
        text.contains(&format!("-t <registry>/portcullis-filter:0.1.0 \\\n#     {context}\n")),
        "documented context is not {context}"
    );
    assert!(read("packaging/README.md").contains(&format!("portcullis-filter:0.1.0 \\\n  {context}\n")));
    // The module built for the tests is there, under that name.
    let built = filter_wasm();
    assert_eq!(built.file_name().unwrap().to_str().unwrap(), copy[0]);
    assert!(built.parent().unwrap().ends_with(&context), "{} is not in {context}", built.display());
}

#[test]
fn make_install_installs_both_binaries_under_destdir_and_prefix() {
    let output = Command::new("make")
        .current_dir(repo_root())
        .args(["-n", "install", "PREFIX=/opt/portcullis", "DESTDIR=/stage"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let plan = String::from_utf8(output.stdout).unwrap();
    let build = plan.lines().find(|l| l.starts_with("cargo build")).unwrap_or_else(|| panic!("{plan}"));
    let profile = flag_value(build, "--profile");
    assert!(read("Cargo.toml").contains(&format!("[profile.{profile}]")));
    let install = plan.lines().find(|l| l.starts_with("install -m")).unwrap_or_else(|| panic!("{plan}"));
    for binary in bin_names(&read("control-plane/Cargo.toml")) {
        assert!(
            install.contains(&format!("target/{profile}/{binary} ")),
            "{binary} not installed: {install}"
        );
    }
    assert!(install.ends_with("\"/stage/opt/portcullis/bin/\""), "{install}");
}
