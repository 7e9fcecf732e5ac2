//! `make oci`: the module's OCI image, read back the way a registry client
//! would, with nothing taken from the builder on trust: every digest and
//! size recomputed from the bytes, the layer unpacked by a tar reader of
//! this test's own, the module compared byte for byte with the built one.
//! A container engine (`ctxgate_e2e::docker`) loads the archive.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Read as _;
use std::path::Path;

use ctxgate_e2e::oci::{self, digest};
use ctxgate_e2e::{repo_root, wasm_module};
use serde_json::Value;

/// The tar entries of `bytes`: (name, content), as any ustar reader sees
/// them.
fn untar(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at + 512 <= bytes.len() {
        let header = &bytes[at..at + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let field = |from: usize, to: usize| {
            let raw = &header[from..to];
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            String::from_utf8(raw[..end].to_vec()).unwrap()
        };
        let stored: u32 = u32::from_str_radix(field(148, 156).trim(), 8).unwrap();
        let mut blank = header.to_vec();
        blank[148..156].copy_from_slice(b"        ");
        let sum: u32 = blank.iter().map(|b| u32::from(*b)).sum();
        assert_eq!(sum, stored, "header checksum of {}", field(0, 100));
        assert_eq!(&header[257..262], b"ustar", "a ustar header");
        assert_eq!(header[156], b'0', "a regular file");
        let size = usize::from_str_radix(field(124, 136).trim(), 8).unwrap();
        let start = at + 512;
        entries.push((field(0, 100), bytes[start..start + size].to_vec()));
        at = start + size.div_ceil(512) * 512;
    }
    entries
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The blob a descriptor names, checked against its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let name = descriptor["digest"].as_str().unwrap();
    let hex = name.strip_prefix("sha256:").unwrap();
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(digest(&bytes), name, "the blob's digest");
    assert_eq!(descriptor["size"], bytes.len(), "the blob's size");
    bytes
}

#[test]
fn the_image_is_istio_s_compat_variant_and_its_layer_is_the_built_module() {
    let module = std::fs::read(wasm_module("ctxgate")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = oci::build(&module, "ghcr.io/ctxgate/ctxgate:0.1.0", dir.path()).unwrap();
    let layout = &image.layout;

    assert_eq!(
        json(&layout.join("oci-layout")),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );
    let index = json(&layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(
        manifests[0]["annotations"]["io.containerd.image.name"],
        "ghcr.io/ctxgate/ctxgate:0.1.0"
    );
    assert_eq!(manifests[0]["mediaType"], oci::MANIFEST_MEDIA_TYPE);
    let manifest_bytes = blob(layout, &manifests[0]);
    assert_eq!(digest(&manifest_bytes), image.manifest_digest);
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();

    // Istio's compat variant: exactly one gzip tar layer, the annotation.
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"],
        "compat"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer");
    assert_eq!(layers[0]["mediaType"], oci::LAYER_MEDIA_TYPE);
    let layer = blob(layout, &layers[0]);
    let layer_tar = gunzip(&layer);
    let entries = untar(&layer_tar);
    assert_eq!(entries.len(), 1, "only the module in the layer");
    assert_eq!(entries[0].0, "plugin.wasm");
    assert!(
        entries[0].1 == module,
        "the layer holds the built module byte for byte"
    );

    // The config names the uncompressed layer.
    assert_eq!(manifest["config"]["mediaType"], oci::CONFIG_MEDIA_TYPE);
    let config: Value = serde_json::from_slice(&blob(layout, &manifest["config"])).unwrap();
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(config["rootfs"]["diff_ids"][0], digest(&layer_tar));
    assert_eq!(
        (config["architecture"].as_str(), config["os"].as_str()),
        (Some("amd64"), Some("linux"))
    );

    // Docker's archive manifest names the same config and layer.
    let docker: Value =
        serde_json::from_slice(&std::fs::read(layout.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        docker,
        serde_json::json!([{
            "Config": manifest["config"]["digest"].as_str().unwrap().replace("sha256:", "blobs/sha256/"),
            "RepoTags": ["ghcr.io/ctxgate/ctxgate:0.1.0"],
            "Layers": [layers[0]["digest"].as_str().unwrap().replace("sha256:", "blobs/sha256/")],
        }])
    );

    // The archive is the layout, file for file.
    let archived = untar(&std::fs::read(&image.archive).unwrap());
    assert_eq!(
        archived.len(),
        6,
        "oci-layout, index.json, manifest.json and three blobs"
    );
    for (name, bytes) in &archived {
        assert!(
            std::fs::read(layout.join(name)).unwrap() == *bytes,
            "{name} differs between the archive and the layout"
        );
    }

    // Reproducible: the same module gives the same digests.
    let again = oci::build(
        &module,
        "ghcr.io/ctxgate/ctxgate:0.1.0",
        &dir.path().join("again"),
    )
    .unwrap();
    assert_eq!(again.manifest_digest, image.manifest_digest);
    assert_eq!(again.layer_digest, image.layer_digest);

    // A container engine loads it (the one that answers, or a private
    // dockerd): its image id is the config's digest, as for any image.
    let engine = ctxgate_e2e::docker::engine();
    let reference = format!("ctxgate-test/oci:{}", std::process::id());
    let tagged = oci::build(&module, &reference, &dir.path().join("tagged")).unwrap();
    let loaded = engine.run(
        engine
            .docker()
            .args(["load", "--input"])
            .arg(&tagged.archive),
    );
    assert!(loaded.contains(&reference), "docker load: {loaded}");
    let id = engine.docker_run(&["image", "inspect", "--format", "{{.Id}}", &reference]);
    let _ = engine.docker().args(["image", "rm", &reference]).output();
    assert_eq!(id.trim(), tagged.config_digest);
}

#[test]
fn the_wasmplugin_pulls_the_image_make_oci_names() {
    let plugin =
        std::fs::read_to_string(repo_root().join("istio/30-wasmplugin-ctxgate.yaml")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        plugin.contains(&format!("url: oci://ghcr.io/ctxgate/ctxgate:{version}")),
        "istio/30-wasmplugin-ctxgate.yaml must pull ghcr.io/ctxgate/ctxgate:{version}, the tag `make oci` builds"
    );
}
