//! The web UI (TypeScript sources in `ui/`), built by this crate's build script and embedded in
//! the binary. The server answers `GET` of any path outside the API with [`asset`], or with the
//! single page's `index.html` for the app's own paths ([`index`]).

use include_dir::{Dir, include_dir};

static DIST: Dir<'static> = include_dir!("$OUT_DIR/dist");

/// One built file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub body: &'static [u8],
    /// The same bytes gzipped, when that is smaller.
    pub gzip: Option<&'static [u8]>,
    pub content_type: &'static str,
    /// Named by its content hash (Vite's `assets/`): cacheable for ever.
    pub immutable: bool,
}

/// The file at `path` (without the leading `/`), if the build has it.
pub fn asset(path: &str) -> Option<Asset> {
    if path.is_empty() || path.ends_with(".gz") {
        return None;
    }
    let file = DIST.get_file(path)?;
    let gzip = DIST.get_file(format!("{path}.gz")).map(|f| f.contents());
    Some(Asset {
        body: file.contents(),
        gzip,
        content_type: content_type(path),
        immutable: path.starts_with("assets/"),
    })
}

/// Every built file (not the gzip copies), by path: what a first visit may download.
pub fn assets() -> Vec<(String, Asset)> {
    fn walk(dir: &'static Dir<'static>, out: &mut Vec<(String, Asset)>) {
        for file in dir.files() {
            let path = file.path().to_string_lossy().into_owned();
            if let Some(a) = asset(&path) {
                out.push((path, a));
            }
        }
        for sub in dir.dirs() {
            walk(sub, out);
        }
    }
    let mut out = Vec::new();
    walk(&DIST, &mut out);
    out
}

/// The page every app path (`/lifts/L-1`, `/alerts`, `/activate`, …) answers with.
pub fn index() -> Asset {
    asset("index.html").expect("the UI build always has index.html")
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map_or("", |(_, ext)| ext) {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_holds_the_page_and_its_hashed_assets_gzipped() {
        let index = index();
        let html = std::str::from_utf8(index.body).expect("utf-8");
        assert!(html.contains("<div id=\"app\""), "{html}");
        assert!(index.gzip.is_some());
        let script = html
            .split("src=\"/")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("index.html loads a script");
        let js = asset(script).expect("the script index.html names is embedded");
        assert!(js.immutable, "{script} is content-hashed");
        assert_eq!(js.content_type, "text/javascript; charset=utf-8");
        assert!(js.gzip.expect("gzipped").len() < js.body.len());
        assert!(asset("index.html.gz").is_none());
        assert!(asset("nope.js").is_none());
    }
}
