//! The release baseline: breaking changes are found against what was released, whatever the
//! commits in between, and a major a tenant still runs cannot be removed.

use crate::common;

use std::{path::Path, process::Command};

use common::{THING_FIELDS, thing};

fn codegen(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-codegen"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("mesh-codegen runs")
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(dir: &Path, path: &str, text: &str) {
    let full = dir.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, text).unwrap();
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `thing/v1` without its field `size`: a breaking change.
fn without_size() -> String {
    thing(&[(
        "{THING_FIELDS}",
        &THING_FIELDS.replace("  int64 size = 2;", ""),
    )])
}

/// A repository with `thing/v1` released: baseline written and committed.
fn released() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path();
    git(dir, &["init", "-q", "-b", "main"]);
    write(dir, "contracts/thing/v1/thing.proto", &thing(&[]));
    write(dir, "README.md", "thing\n");
    let out = codegen(&["baseline", "update", "--release", "v0.1.0"], dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.join("contracts/baseline.binpb").exists());
    assert!(dir.join("contracts/baseline.release").exists());
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "release"]);
    repo
}

#[test]
fn a_break_in_an_earlier_commit_fails_against_the_baseline() {
    let repo = released();
    let dir = repo.path();
    // commit 1 removes a field (breaking), commit 2 only edits the README (harmless)
    let removed = without_size();
    write(dir, "contracts/thing/v1/thing.proto", &removed);
    git(dir, &["commit", "-q", "-am", "drop size"]);
    write(dir, "README.md", "thing, documented\n");
    git(dir, &["commit", "-q", "-am", "docs"]);

    // comparing with the previous commit sees nothing: the hole this baseline closes
    let previous = codegen(&["check", "--against-git", "HEAD~1"], dir);
    assert!(previous.status.success(), "{}", text(&previous));
    // against the release commit it is seen, pointed at in that revision
    let release = codegen(&["check", "--against-git", "HEAD~2"], dir);
    assert_eq!(release.status.code(), Some(1), "{}", text(&release));
    assert!(
        text(&release).contains("  HEAD~2:thing/v1/thing.proto:"),
        "{}",
        text(&release)
    );

    let against = codegen(&["check", "--against-baseline"], dir);
    assert_eq!(against.status.code(), Some(1), "{}", text(&against));
    let said = text(&against);
    assert!(
        said.contains("1 breaking change(s) and 0 warning(s) against contracts/baseline.binpb"),
        "{said}"
    );
    assert!(said.contains("FieldRemoved"), "{said}");
    // the deleted field is pointed at in the released file, with its line
    assert!(
        said.contains("contracts/baseline.binpb/thing/v1/thing.proto:"),
        "{said}"
    );
}

#[test]
fn a_harmless_change_and_a_new_major_pass_without_touching_the_baseline() {
    let repo = released();
    let dir = repo.path();
    let before = std::fs::read(dir.join("contracts/baseline.binpb")).unwrap();
    let added = thing(&[(
        "{THING_FIELDS}",
        &format!("{THING_FIELDS}\n  string label = 9;"),
    )]);
    write(dir, "contracts/thing/v1/thing.proto", &added);
    // thing/v2 beside thing/v1, with a breaking difference: it is a new major, hence new
    let v2 = without_size()
        .replace("thing.v1", "thing.v2")
        .replace("version: \"1.0.0\"", "version: \"2.0.0\"");
    write(dir, "contracts/thing/v2/thing.proto", &v2);
    let out = codegen(&["check", "--against-baseline"], dir);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 contract(s) valid"), "{}", text(&out));
    assert_eq!(
        std::fs::read(dir.join("contracts/baseline.binpb")).unwrap(),
        before,
        "check never writes the baseline"
    );
}

#[test]
fn removing_a_major_a_tenant_runs_is_refused() {
    let repo = released();
    let dir = repo.path();
    let v2 = thing(&[])
        .replace("thing.v1", "thing.v2")
        .replace("version: \"1.0.0\"", "version: \"2.0.0\"");
    write(dir, "contracts/thing/v2/thing.proto", &v2);
    write(
        dir,
        "tenants/_defaults.toml",
        "[services.thing]\nversion = \"v1\"\n",
    );
    write(dir, "tenants/shop.toml", "id = \"shop\"\n");
    write(
        dir,
        "tenants/market.toml",
        "id = \"market\"\n[services.thing]\nversion = \"v2\"\n",
    );
    let ok = codegen(&["check", "--tenants", "tenants"], dir);
    assert!(ok.status.success(), "{}", text(&ok));

    // thing/v1 removed (released, and shop inherits it from _defaults.toml)
    std::fs::remove_dir_all(dir.join("contracts/thing/v1")).unwrap();
    let out = codegen(
        &["check", "--tenants", "tenants", "--against-baseline"],
        dir,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("tenants/shop.toml: runs contract thing/v1 (inherited from _defaults.toml), which is not in contracts"),
        "{said}"
    );
    assert!(!said.contains("market.toml"), "{said}");
    assert!(said.contains("ContractRemoved"), "{said}");

    // even after a release that accepts the break, the tenant check alone still refuses it
    let update = codegen(
        &[
            "baseline",
            "update",
            "--release",
            "v0.2.0",
            "--accept-breaking",
        ],
        dir,
    );
    assert!(update.status.success(), "{}", text(&update));
    let out = codegen(
        &["check", "--tenants", "tenants", "--against-baseline"],
        dir,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no breaking changes against"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_file_that_is_no_baseline_is_refused_by_name() {
    let repo = released();
    let dir = repo.path();
    write(
        dir,
        "contracts/baseline.binpb",
        "not protobuf at all \u{7}\u{0}",
    );
    // as the repository's own, its release record refuses it first
    let own = codegen(&["check", "--against-baseline"], dir);
    assert_eq!(own.status.code(), Some(1), "{}", text(&own));
    assert!(
        text(&own).contains("contracts/baseline.binpb is not the baseline release v0.1.0 wrote"),
        "{}",
        text(&own)
    );
    // named explicitly, it is read as a baseline, and refused as none
    let out = codegen(
        &["check", "--against-baseline", "contracts/baseline.binpb"],
        dir,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("contracts/baseline.binpb"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_repository_baseline_is_current_for_its_contracts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let baseline = mesh_codegen::load_baseline(&root.join("contracts/baseline.binpb"))
        .expect("contracts/baseline.binpb loads");
    let head = mesh_codegen::load(&root.join("contracts")).expect("contracts/ is valid");
    let changes = mesh_codegen::compare(&baseline, &head);
    assert!(changes.is_empty(), "{changes:#?}");
    let released: Vec<&str> = baseline.contracts.iter().map(|c| c.dir.as_str()).collect();
    assert!(released.contains(&"order/v2"), "{released:?}");
}

/// A break absorbed by the baseline never passes unseen: `baseline update` lists it and
/// refuses without `--accept-breaking`, and a baseline changed any other way (here: written in
/// a second commit over the break of the first, without a release) fails `check`, as CI runs it
/// (`.ci/contracts`).
#[test]
fn a_baseline_that_absorbs_a_break_is_a_release_or_refused() {
    let repo = released();
    let dir = repo.path();
    let removed = without_size();
    write(dir, "contracts/thing/v1/thing.proto", &removed);
    git(dir, &["commit", "-q", "-am", "drop size"]);
    let before = std::fs::read(dir.join("contracts/baseline.binpb")).unwrap();

    // the update lists what it would absorb, and refuses
    let refused = codegen(&["baseline", "update", "--release", "v0.2.0"], dir);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let said = text(&refused);
    assert!(said.contains("absorbs 1 breaking change(s)"), "{said}");
    assert!(said.contains("FieldRemoved"), "{said}");
    assert!(said.contains("--accept-breaking"), "{said}");
    assert_eq!(
        std::fs::read(dir.join("contracts/baseline.binpb")).unwrap(),
        before
    );

    // the second commit of the submission writes the baseline another way (a copy made
    // elsewhere): CI's check refuses a baseline no release wrote
    let elsewhere = dir.join("elsewhere.binpb");
    let out = codegen(
        &[
            "baseline",
            "update",
            "--release",
            "v0.2.0",
            "--accept-breaking",
            "--out",
            elsewhere.to_str().unwrap(),
        ],
        dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    std::fs::copy(&elsewhere, dir.join("contracts/baseline.binpb")).unwrap();
    std::fs::remove_file(&elsewhere).unwrap();
    std::fs::remove_file(dir.join("elsewhere.release")).unwrap();
    git(dir, &["commit", "-q", "-am", "update the baseline"]);
    write(dir, "tenants/_defaults.toml", "");
    let ci = Command::new("bash")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/contracts"))
        .env("MESH_CODEGEN", env!("CARGO_BIN_EXE_mesh-codegen"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(ci.status.code(), Some(1), "{}", text(&ci));
    let said = text(&ci);
    assert!(
        said.contains("is not the baseline release v0.1.0 wrote"),
        "{said}"
    );

    // a release that breaks on purpose says so, and is then the reference
    let release = codegen(
        &[
            "baseline",
            "update",
            "--release",
            "v1.0.0",
            "--accept-breaking",
        ],
        dir,
    );
    assert!(release.status.success(), "{}", text(&release));
    assert!(
        text(&release).contains("release v1.0.0"),
        "{}",
        text(&release)
    );
    let record = std::fs::read_to_string(dir.join("contracts/baseline.release")).unwrap();
    assert!(record.contains("version = \"v1.0.0\""), "{record}");
    let check = codegen(&["check", "--against-baseline"], dir);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("is the baseline of release v1.0.0"),
        "{}",
        text(&check)
    );
    // in CI, the release's breaking changes against the baseline it replaced are listed, and
    // refused unless the release is tagged
    git(dir, &["commit", "-q", "-am", "release v1.0.0"]);
    let contracts_ci = |dir: &Path| {
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/contracts"))
            .env("MESH_CODEGEN", env!("CARGO_BIN_EXE_mesh-codegen"))
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let untagged = contracts_ci(dir);
    assert_eq!(untagged.status.code(), Some(1), "{}", text(&untagged));
    let said = text(&untagged);
    assert!(said.contains("FieldRemoved"), "{said}");
    assert!(said.contains("is not tagged v1.0.0"), "{said}");
    git(dir, &["tag", "v1.0.0"]);
    let tagged = contracts_ci(dir);
    assert!(tagged.status.success(), "{}", text(&tagged));
    assert!(
        text(&tagged).contains("since tag v1.0.0"),
        "{}",
        text(&tagged)
    );

    // two commits: a release absorbing a break, then its record renamed to another version
    // (or the release written again): the break is still the first release's, untagged
    let without_tags = THING_FIELDS
        .replace("  int64 size = 2;", "")
        .replace("  repeated string tags = 3;", "");
    write(
        dir,
        "contracts/thing/v1/thing.proto",
        &thing(&[("{THING_FIELDS}", &without_tags)]),
    );
    let absorbed = codegen(
        &[
            "baseline",
            "update",
            "--release",
            "v1.1.0",
            "--accept-breaking",
        ],
        dir,
    );
    assert!(absorbed.status.success(), "{}", text(&absorbed));
    git(dir, &["commit", "-q", "-am", "release v1.1.0"]);
    let record = std::fs::read_to_string(dir.join("contracts/baseline.release")).unwrap();
    write(
        dir,
        "contracts/baseline.release",
        &record.replace("v1.1.0", "v1.1.1"),
    );
    git(dir, &["commit", "-q", "-am", "call it v1.1.1"]);
    let buried = contracts_ci(dir);
    assert_eq!(buried.status.code(), Some(1), "{}", text(&buried));
    let said = text(&buried);
    assert!(
        said.contains("FieldRemoved") && said.contains("tags"),
        "{said}"
    );
    assert!(said.contains("is not tagged v1.1.1"), "{said}");
    let again = codegen(&["baseline", "update", "--release", "v1.1.2"], dir);
    assert!(again.status.success(), "{}", text(&again));
    git(dir, &["commit", "-q", "-am", "release v1.1.2"]);
    let still = contracts_ci(dir);
    assert_eq!(still.status.code(), Some(1), "{}", text(&still));
    assert!(
        text(&still).contains("is not tagged v1.1.2"),
        "{}",
        text(&still)
    );
    git(dir, &["tag", "v1.1.0", "HEAD~2"]);
    let tagged = contracts_ci(dir);
    assert!(tagged.status.success(), "{}", text(&tagged));

    // a release is `v` and a semantic version
    let bad = codegen(&["baseline", "update", "--release", "soon"], dir);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}

/// `--error-format json` prints the one JSON array on standard output, and nothing else.
#[test]
fn json_output_is_only_json() {
    let repo = released();
    let dir = repo.path();
    let removed = without_size();
    write(dir, "contracts/thing/v1/thing.proto", &removed);
    for args in [
        &["check", "--against-baseline", "--error-format", "json"][..],
        &["check", "--error-format", "json"][..],
    ] {
        let out = codegen(args, dir);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not one JSON value ({e}): {stdout:?}"));
        assert!(parsed.is_array(), "{parsed}");
    }
}

/// The files rewritten around a break do not hide it: a baseline and its record deleted, then
/// written again (with nothing to compare against, `baseline update` needs no flag), and many
/// releases after it: every baseline held since release records began is kept, untagged.
#[test]
fn deleting_the_baseline_or_burying_a_break_under_releases_does_not_hide_it() {
    let repo = released();
    let dir = repo.path();
    let contracts_ci = || {
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/contracts"))
            .env("MESH_CODEGEN", env!("CARGO_BIN_EXE_mesh-codegen"))
            .current_dir(dir)
            .output()
            .unwrap()
    };
    write(dir, "tenants/_defaults.toml", "");
    write(dir, "contracts/thing/v1/thing.proto", &without_size());
    git(
        dir,
        &[
            "rm",
            "-q",
            "contracts/baseline.binpb",
            "contracts/baseline.release",
        ],
    );
    git(
        dir,
        &["commit", "-q", "-am", "drop size, and the baseline with it"],
    );
    let rewritten = codegen(&["baseline", "update", "--release", "v0.2.0"], dir);
    assert!(rewritten.status.success(), "{}", text(&rewritten));
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "release v0.2.0"]);
    let ci = contracts_ci();
    assert_eq!(ci.status.code(), Some(1), "{}", text(&ci));
    assert!(text(&ci).contains("FieldRemoved"), "{}", text(&ci));
    assert!(text(&ci).contains("is not tagged v0.2.0"), "{}", text(&ci));
    // sixty harmless releases later, the first one's break is still found
    let base = without_size();
    for n in 1..=60 {
        write(
            dir,
            "contracts/thing/v1/thing.proto",
            &format!("{base}\n// note {n}\n"),
        );
        let release = format!("v0.2.{n}");
        let out = codegen(&["baseline", "update", "--release", &release], dir);
        assert!(out.status.success(), "{}", text(&out));
        git(dir, &["commit", "-q", "-am", &release]);
    }
    let ci = contracts_ci();
    assert_eq!(ci.status.code(), Some(1), "{}", text(&ci));
    assert!(text(&ci).contains("is not tagged v0.2.60"), "{}", text(&ci));
    // the release that owns it, tagged, is the new anchor
    git(dir, &["tag", "v0.2.60"]);
    let ci = contracts_ci();
    assert!(ci.status.success(), "{}", text(&ci));
}
