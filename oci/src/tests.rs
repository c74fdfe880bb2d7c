//! Unit tests of the layer and the image layout.

use super::*;

/// (path, type, mode, uid, gid, mtime, content or link target) of every tar entry.
type Listed = (String, tar::EntryType, u32, u64, u64, u64, Vec<u8>);

fn list(tarball: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(tarball);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let h = entry.header().clone();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            if h.entry_type() == tar::EntryType::Symlink {
                data = entry.link_name_bytes().unwrap().into_owned();
            } else {
                entry.read_to_end(&mut data).unwrap();
            }
            (path, h.entry_type(), h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap(), data)
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn sample() -> Image {
    let mut image = Image::new("0.1.0");
    image.entries = vec![
        Entry::file("/usr/bin/app", 0o755, b"binary".as_slice()),
        Entry::dir("/tmp", 0o1777),
        Entry::symlink("/usr/bin/alias", "app"),
        Entry::file("etc/passwd", 0o644, b"root:x:0:0:root:/:/sbin/nologin\n".as_slice()),
        Entry::dir("/proc", 0o555),
    ];
    image.config = Config {
        entrypoint: vec!["/usr/bin/app".into()],
        cmd: vec!["run".into()],
        env: vec!["PATH=/usr/bin".into()],
        working_dir: Some("/".into()),
        user: Some("0:0".into()),
        labels: BTreeMap::from([("org.opencontainers.image.version".into(), "0.1.0".into())]),
    };
    image.annotations = image.config.labels.clone();
    image
}

/// The blobs of a layout tarball by digest, and `index.json`.
fn blobs(tarball: &[u8]) -> (BTreeMap<String, Vec<u8>>, Value) {
    let mut blobs = BTreeMap::new();
    let mut index = Value::Null;
    for (name, .., data) in list(tarball) {
        if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            blobs.insert(format!("sha256:{hex}"), data);
        } else if name == "index.json" {
            index = serde_json::from_slice(&data).unwrap();
        }
    }
    (blobs, index)
}

#[test]
fn layer_is_sorted_with_parents_owned_by_root_at_time_zero() {
    let layer = sample().layer().unwrap();
    let entries = list(&layer);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        ["etc/", "etc/passwd", "proc/", "tmp/", "usr/", "usr/bin/", "usr/bin/alias", "usr/bin/app"],
        "implied parents come first, everything sorted by path"
    );
    for (path, kind, mode, uid, gid, mtime, data) in &entries {
        assert_eq!((*uid, *gid, *mtime), (0, 0, 0), "{path}");
        match path.as_str() {
            "tmp/" => assert_eq!((*kind, *mode), (tar::EntryType::Directory, 0o1777)),
            "proc/" => assert_eq!(*mode, 0o555),
            "usr/" | "usr/bin/" | "etc/" => assert_eq!((*kind, *mode), (tar::EntryType::Directory, 0o755)),
            "usr/bin/app" => {
                assert_eq!((*kind, *mode, data.as_slice()), (tar::EntryType::Regular, 0o755, &b"binary"[..]))
            }
            "usr/bin/alias" => assert_eq!((*kind, data.as_slice()), (tar::EntryType::Symlink, &b"app"[..])),
            "etc/passwd" => assert_eq!(*mode, 0o644),
            _ => unreachable!("{path}"),
        }
    }
}

#[test]
fn layout_blobs_match_their_digests_and_refer_to_each_other() {
    let image = sample();
    let tarball = image.tar().unwrap();
    let entries = list(&tarball);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names[..4], ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]);
    assert_eq!(names.len(), 7, "{names:?}");
    assert_eq!(entries[0].6, br#"{"imageLayoutVersion":"1.0.0"}"#);
    for (path, _, _, uid, gid, mtime, data) in &entries {
        assert_eq!((*uid, *gid, *mtime), (0, 0, 0), "{path}");
        if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            assert_eq!(sha256_hex(data), hex, "{path}");
        }
    }

    let (blobs, index) = blobs(&tarball);
    assert_eq!(index["mediaType"], MEDIA_TYPE_INDEX);
    let descriptor = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(descriptor["annotations"][REF_NAME], "0.1.0");
    assert_eq!(descriptor["annotations"]["org.opencontainers.image.version"], "0.1.0");
    assert_eq!(descriptor["platform"], json!({ "architecture": host_architecture(), "os": "linux" }));
    let manifest_bytes = &blobs[descriptor["digest"].as_str().unwrap()];
    assert_eq!(descriptor["size"], manifest_bytes.len());
    let manifest: Value = serde_json::from_slice(manifest_bytes).unwrap();
    assert_eq!(manifest["mediaType"], MEDIA_TYPE_MANIFEST);
    assert_eq!(manifest["annotations"]["org.opencontainers.image.version"], "0.1.0");

    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], MEDIA_TYPE_LAYER);
    let layer_bytes = &blobs[layer["digest"].as_str().unwrap()];
    assert_eq!(layer["size"], layer_bytes.len());
    assert_eq!(*layer_bytes, image.layer().unwrap(), "the layer blob is the uncompressed layer");

    let config_bytes = &blobs[manifest["config"]["digest"].as_str().unwrap()];
    assert_eq!(manifest["config"]["size"], config_bytes.len());
    let config: Value = serde_json::from_slice(config_bytes).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"], json!([layer["digest"]]), "uncompressed: diff_id = layer digest");
    assert_eq!(config["os"], "linux");
    assert_eq!(
        config["config"],
        json!({
            "Entrypoint": ["/usr/bin/app"],
            "Cmd": ["run"],
            "Env": ["PATH=/usr/bin"],
            "WorkingDir": "/",
            "User": "0:0",
            "Labels": { "org.opencontainers.image.version": "0.1.0" },
        })
    );
    assert!(config.get("created").is_none(), "no time is recorded");
}

#[test]
fn output_is_deterministic_whatever_the_entry_order() {
    let image = sample();
    let mut reversed = image.clone();
    reversed.entries.reverse();
    let tarball = image.tar().unwrap();
    assert_eq!(tarball, image.tar().unwrap());
    assert_eq!(tarball, reversed.tar().unwrap());
    let mut other = image.clone();
    other.ref_name = "0.1.0-b".into();
    assert_ne!(tarball, other.tar().unwrap(), "the ref name is in index.json");
    assert_eq!(other.layer().unwrap(), image.layer().unwrap());
}

#[test]
fn empty_config_fields_are_left_out() {
    let image = Image::new("1");
    let (blobs, _) = blobs(&image.tar().unwrap());
    let config =
        blobs.values().filter_map(|b| serde_json::from_slice::<Value>(b).ok()).find(|v| v.get("rootfs").is_some());
    assert_eq!(config.unwrap()["config"], json!({}));
}

#[test]
fn ref_names_reads_index_json() {
    let tarball = sample().tar().unwrap();
    assert_eq!(ref_names(tarball.as_slice()).unwrap(), ["0.1.0"]);
    let layer = sample().layer().unwrap();
    assert!(matches!(ref_names(layer.as_slice()), Err(Error::NoIndex)));
}

#[test]
fn bad_entries_are_errors() {
    let with = |entries: Vec<Entry>| Image { entries, ..Image::new("1") }.layer().unwrap_err();
    for path in ["", "/", "a//b", "a/./b", "../etc", "a/", "//a"] {
        assert!(matches!(with(vec![Entry::dir(path, 0o755)]), Error::InvalidPath { .. }), "{path:?}");
    }
    assert!(matches!(
        with(vec![Entry::dir("/a", 0o755), Entry::dir("a", 0o700)]),
        Error::DuplicatePath { path } if path == "a"
    ));
    let err = with(vec![Entry::file("/lib", 0o644, Vec::new()), Entry::file("/lib/libc.so.6", 0o755, Vec::new())]);
    assert_eq!(err.to_string(), "layer path /lib/libc.so.6 is below /lib, which is not a directory");
    assert!(matches!(with(vec![Entry::dir("/a", 0o40755)]), Error::InvalidMode { mode: 0o40755, .. }));
    assert!(matches!(with(vec![Entry::symlink("/a", "")]), Error::InvalidSymlink { .. }));
}

#[test]
fn ref_names_follow_the_oci_grammar() {
    for good in ["1", "0.1.0", "latest", "0.1.0-b", "local/busybox:1", "a--b", "v1+build"] {
        assert!(valid_ref_name(good), "{good}");
    }
    for bad in ["", "-1", "1-", "a..b", "a---b", "a//b", "/a", "a b", "ä"] {
        assert!(!valid_ref_name(bad), "{bad}");
    }
    let err = Image::new("a b").tar().unwrap_err();
    assert!(matches!(err, Error::InvalidRefName { .. }));
}
