//! Builds the web UI in `ui/` (TypeScript type check, then Vite) into `OUT_DIR/dist`, and writes a
//! gzip copy beside each asset, so the binary serves it with nothing else installed.
//!
//! npm runs only when something under `ui/` changed; `npm ci` only when `node_modules` is missing
//! or older than `package-lock.json`. `HOISTWAY_UI_DIST` names a directory already built (by
//! `npm run build` elsewhere) to embed instead, for machines without Node.js.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const INPUTS: &[&str] = &[
    "src",
    "public",
    "index.html",
    "package.json",
    "package-lock.json",
    "tsconfig.json",
    "vite.config.ts",
    // The API document the UI's types are generated from (`npm run types`).
    "openapi.json",
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let ui = manifest.join("../../ui");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("dist");
    println!("cargo:rerun-if-env-changed=HOISTWAY_UI_DIST");
    for input in INPUTS {
        println!("cargo:rerun-if-changed={}", ui.join(input).display());
    }
    if out.exists() {
        fs::remove_dir_all(&out).expect("clear the previous UI build");
    }
    match std::env::var_os("HOISTWAY_UI_DIST") {
        Some(prebuilt) => copy_dir(Path::new(&prebuilt), &out),
        None => build(&ui, &out),
    }
    compress(&out);
}

fn fail(message: &str) -> ! {
    eprintln!("\nerror: {message}\n");
    panic!("{message}");
}

fn build(ui: &Path, out: &Path) {
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    match Command::new(npm).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => fail(
            "building Hoistway's web UI needs Node.js 20 or newer with npm (e.g. `apt-get install \
             nodejs npm`); or set HOISTWAY_UI_DIST to a UI already built with `npm run build` in ui/",
        ),
    }
    let lock = ui.join("package-lock.json");
    let installed = ui.join("node_modules/.package-lock.json");
    let stale = match (modified(&installed), modified(&lock)) {
        (Some(installed), Some(lock)) => installed < lock,
        _ => true,
    };
    if stale {
        run(
            Command::new(npm)
                .current_dir(ui)
                .args(["ci", "--no-audit", "--no-fund"]),
            "npm ci",
        );
    }
    run(
        Command::new(npm)
            .current_dir(ui)
            .args(["run", "build", "--", "--emptyOutDir", "--outDir"])
            .arg(out),
        "npm run build (API types from openapi.json, tsc type check, then vite build)",
    );
}

fn run(cmd: &mut Command, what: &str) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!("{what} in ui/ failed ({s}); its output is above")),
        Err(e) => fail(&format!("{what} in ui/ could not start: {e}")),
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the UI output directory");
    for entry in fs::read_dir(from).unwrap_or_else(|e| fail(&format!("{}: {e}", from.display()))) {
        let entry = entry.expect("read the prebuilt UI");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy the prebuilt UI");
        }
    }
}

/// Writes `NAME.gz` beside each text asset when it is smaller.
fn compress(dir: &Path) {
    for entry in fs::read_dir(dir).expect("read the UI build") {
        let path = entry.expect("read the UI build").path();
        if path.is_dir() {
            compress(&path);
            continue;
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "html" | "js" | "css" | "svg" | "json" | "txt" | "map") {
            continue;
        }
        let body = fs::read(&path).expect("read a UI asset");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&body).expect("gzip in memory");
        let gz = gz.finish().expect("gzip in memory");
        if gz.len() < body.len() {
            let mut name = path.file_name().expect("a file").to_os_string();
            name.push(".gz");
            fs::write(path.with_file_name(name), gz).expect("write a gzipped UI asset");
        }
    }
}
