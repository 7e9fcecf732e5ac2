//! The OCI image of the Wasm module that Istio's WasmPlugin pulls, built
//! without a container engine (`make oci`).
//!
//! The image is Istio's *compat* variant of the Wasm image format: one
//! layer (`application/vnd.oci.image.layer.v1.tar+gzip`) holding the
//! module as `plugin.wasm`, and the manifest annotation
//! `module.wasm.image/variant: compat`. The config is an OCI image config
//! whose one `diff_id` is the uncompressed layer's digest, with the
//! platform `linux`/`amd64` that `docker build` gives Istio's documented
//! `FROM scratch` + `COPY plugin.wasm` image: Istio ignores the platform of
//! a Wasm image, while Docker engines before 24 refuse to load an image
//! whose `os` they do not know (`wasip1`: "unknown operating system").
//!
//! It is written as an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`, plus the `manifest.json` of Docker's own archive
//! format, as `docker save` writes since Docker 25) and as a tar of that
//! layout, which `docker load` (any version), `skopeo copy
//! oci-archive:...` and `crane push` take. Every byte is
//! reproducible: the tar entry and the gzip header carry no time, owner or
//! host, so the same module always gives the same digests.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The file the compat variant's layer must hold.
pub const MODULE_FILE: &str = "plugin.wasm";

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A tar archive (ustar) of `files`, in order: regular files, mode 0644,
/// owner 0:0, time 0.
pub fn tar(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (name, content) in files {
        anyhow::ensure!(
            name.len() < 100,
            "{name}: tar names are under 100 bytes here"
        );
        let mut header = [0u8; 512];
        fn put(header: &mut [u8; 512], at: usize, field: &[u8]) {
            if let Some(slot) = header.get_mut(at..at + field.len()) {
                slot.copy_from_slice(field);
            }
        }
        put(&mut header, 0, name.as_bytes());
        put(&mut header, 100, b"0000644\0");
        put(&mut header, 108, b"0000000\0");
        put(&mut header, 116, b"0000000\0");
        put(
            &mut header,
            124,
            format!("{:011o}\0", content.len()).as_bytes(),
        );
        put(&mut header, 136, b"00000000000\0");
        put(&mut header, 148, b"        ");
        put(&mut header, 156, b"0");
        put(&mut header, 257, b"ustar\0");
        put(&mut header, 263, b"00");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        put(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    // Two zero blocks end the archive.
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// gzip of `bytes` with no name and time 0 in its header.
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// What [`build`] wrote.
#[derive(Debug, Clone)]
pub struct Image {
    /// The OCI image layout directory.
    pub layout: PathBuf,
    /// The layout as one tar (`docker load -i`).
    pub archive: PathBuf,
    pub manifest_digest: String,
    pub layer_digest: String,
    pub config_digest: String,
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(bytes), "size": bytes.len()})
}

/// Where a blob lives in the layout: `blobs/sha256/<hex>`.
fn blob_path(blob: &[u8]) -> String {
    digest(blob).replace("sha256:", "blobs/sha256/")
}

fn json_bytes(value: &Value) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

/// Builds the image of `module` (the `.wasm` bytes) named `reference`
/// (`ghcr.io/ctxgate/ctxgate:0.1.0`) into `out`: the layout in
/// `out/layout`, its tar in `out/ctxgate-oci.tar`.
pub fn build(module: &[u8], reference: &str, out: &Path) -> Result<Image> {
    let layer_tar = tar(&[(MODULE_FILE, module)])?;
    let layer = gzip(&layer_tar)?;
    let config = json_bytes(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer_tar)]},
        "history": [{"created_by": "make oci: dist/ctxgate.wasm as /plugin.wasm"}],
    }))?;
    let manifest = json_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer)],
        "annotations": {"module.wasm.image/variant": "compat"},
    }))?;
    let mut manifest_descriptor = descriptor(MANIFEST_MEDIA_TYPE, &manifest);
    if let Some(d) = manifest_descriptor.as_object_mut() {
        // The name `docker load` and `skopeo` give the image.
        d.insert(
            "annotations".into(),
            json!({
                "org.opencontainers.image.ref.name": reference.rsplit_once(':').map_or("latest", |(_, tag)| tag),
                "io.containerd.image.name": reference,
            }),
        );
    }
    let index = json_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [manifest_descriptor],
    }))?;
    let oci_layout = json_bytes(&json!({"imageLayoutVersion": "1.0.0"}))?;
    // Docker's archive format: config and layers by file name.
    let docker_manifest = json_bytes(&json!([{
        "Config": blob_path(&config),
        "RepoTags": [reference],
        "Layers": [blob_path(&layer)],
    }]))?;

    let layout = out.join("layout");
    if layout.exists() {
        std::fs::remove_dir_all(&layout).with_context(|| format!("clear {}", layout.display()))?;
    }
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("create {}", blobs.display()))?;
    let mut entries: Vec<(String, Vec<u8>)> = vec![
        ("oci-layout".into(), oci_layout),
        ("index.json".into(), index),
        ("manifest.json".into(), docker_manifest),
    ];
    for blob in [&layer, &config, &manifest] {
        entries.push((blob_path(blob), blob.clone()));
    }
    for (name, bytes) in &entries {
        std::fs::write(layout.join(name), bytes).with_context(|| format!("write {name}"))?;
    }
    let files: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let archive = out.join("ctxgate-oci.tar");
    std::fs::write(&archive, tar(&files)?)
        .with_context(|| format!("write {}", archive.display()))?;
    Ok(Image {
        layout,
        archive,
        manifest_digest: digest(&manifest),
        layer_digest: digest(&layer),
        config_digest: digest(&config),
    })
}
