//! The file-system endpoints against the real binary: streamed transfers, Daytona's bulk multipart formats,
//! listing and metadata, folders, move, permissions, delete, find, search, replace, and their failure paths.

use std::os::unix::fs::PermissionsExt;

use sandbar_testkit::daemon::{TestDaemon, percent};
use serde_json::json;

fn random_bytes(n: usize) -> Vec<u8> {
    // xorshift: no extra dependency, different bytes everywhere.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn upload_download_round_trip_streams_large_files() {
    let d = TestDaemon::start();
    let data = random_bytes(24 << 20);
    let path = d.work.join("deep/dir/blob.bin");
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(data.clone()).file_name("blob.bin"));
    let r = d
        .client
        .post(d.url(&format!("/files/upload?path={}", percent(path.to_str().unwrap()))))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let r =
        d.client.get(d.url(&format!("/files/download?path={}", percent(path.to_str().unwrap())))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], data.len().to_string().as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    // No temporary files are left next to the destination.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");

    let r = d
        .client
        .get(d.url(&format!("/files/download?path={}", percent(d.work.to_str().unwrap()))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a directory is not downloadable");
    let r = d.client.get(d.url("/files/download?path=/nope/none")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["code"], "FILE_NOT_FOUND");
}

#[tokio::test]
async fn bulk_upload_and_bulk_download_speak_daytona_multipart() {
    let d = TestDaemon::start();
    let a = d.work.join("bulk/a.txt");
    let b = d.work.join("bulk/sub/b é.bin");
    let form = reqwest::multipart::Form::new()
        .text("files[0].path", a.to_str().unwrap().to_owned())
        .text("files[1].path", b.to_str().unwrap().to_owned())
        .part("files[0].file", reqwest::multipart::Part::bytes(b"alpha".to_vec()).file_name("a.txt"))
        .part("files[1].file", reqwest::multipart::Part::bytes(random_bytes(300_000)).file_name("b"));
    let r = d.client.post(d.url("/files/bulk-upload")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(std::fs::read(&a).unwrap(), b"alpha");
    assert_eq!(std::fs::read(&b).unwrap(), random_bytes(300_000));

    let missing = d.work.join("bulk/missing.txt");
    let paths = [a.to_str().unwrap(), b.to_str().unwrap(), missing.to_str().unwrap()];
    let r = d.client.post(d.url("/files/bulk-download")).json(&json!({ "paths": paths })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    let boundary = ct.strip_prefix("multipart/form-data; boundary=").expect(&ct).to_owned();
    let body = r.bytes().await.unwrap().to_vec();
    let closing = format!("--{boundary}--\r\n");
    assert!(body.ends_with(closing.as_bytes()), "closing boundary present");
    // Parse the parts: headers, then exactly Content-Length bytes.
    let mut parts = Vec::new();
    let mut rest = &body[..];
    let delim = format!("--{boundary}\r\n");
    while rest.starts_with(delim.as_bytes()) {
        rest = &rest[delim.len()..];
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(rest[..end].to_vec()).unwrap();
        rest = &rest[end + 4..];
        let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        parts.push((head, rest[..len].to_vec()));
        rest = &rest[len + 2..];
    }
    assert_eq!(rest, closing.as_bytes());
    assert_eq!(parts.len(), 3);
    assert!(parts[0].0.contains(&format!("name=\"file\"; filename=\"{}\"", paths[0])), "{}", parts[0].0);
    assert_eq!(parts[0].1, b"alpha");
    assert!(parts[1].0.contains("filename*=utf-8''"), "non-ASCII names get RFC 5987: {}", parts[1].0);
    assert_eq!(parts[1].1, random_bytes(300_000));
    assert!(parts[2].0.contains("name=\"error\"") && parts[2].0.contains("application/json"));
    let err: serde_json::Value = serde_json::from_slice(&parts[2].1).unwrap();
    assert_eq!((err["code"].as_str(), err["statusCode"].as_u64()), (Some("FILE_NOT_FOUND"), Some(404)));
    assert_eq!(err["source"], "DAYTONA_DAEMON");

    // A file part without its path part is refused and leaves nothing behind.
    let form = reqwest::multipart::Form::new()
        .part("files[0].file", reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("x"));
    let r = d.client.post(d.url("/files/bulk-upload")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn list_info_folder_move_permissions_delete() {
    let d = TestDaemon::start();
    let base = d.work.join("tree");
    let (s, _) = d
        .post(&format!("/files/folder?path={}&mode=750", percent(base.join("x/y").to_str().unwrap())), json!(null))
        .await;
    assert_eq!(s, 201);
    assert_eq!(std::fs::metadata(base.join("x/y")).unwrap().permissions().mode() & 0o777, 0o750);
    std::fs::write(base.join("f.txt"), "hello").unwrap();

    let (s, list) = d.get(&format!("/files?path={}", percent(base.to_str().unwrap()))).await;
    assert_eq!(s, 200);
    let names: Vec<_> = list.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["f.txt", "x"]);
    let f = &list[0];
    assert_eq!((f["isDir"].as_bool(), f["size"].as_u64()), (Some(false), Some(5)));
    for key in ["mode", "modTime", "permissions", "owner", "group"] {
        assert!(f[key].is_string(), "{key}: {f}");
    }
    assert_eq!(f["mode"], "-rw-r--r--");
    let (_, deep) = d.get(&format!("/files?path={}&depth=3", percent(base.to_str().unwrap()))).await;
    assert_eq!(deep.as_array().unwrap().len(), 3);

    let (s, info) = d.get(&format!("/files/info?path={}", percent(base.join("x").to_str().unwrap()))).await;
    assert_eq!((s, info["isDir"].as_bool(), info["permissions"].as_str()), (200, Some(true), Some("0755")));
    assert_eq!(d.get("/files/info?path=/no/such").await.0, 404);
    assert_eq!(d.get(&format!("/files?path={}", percent(base.join("f.txt").to_str().unwrap()))).await.0, 400);

    let src = percent(base.join("f.txt").to_str().unwrap());
    let dst = percent(base.join("x/g.txt").to_str().unwrap());
    assert_eq!(d.post(&format!("/files/move?source={src}&destination={dst}"), json!(null)).await.0, 200);
    assert_eq!(std::fs::read_to_string(base.join("x/g.txt")).unwrap(), "hello");
    std::fs::write(base.join("h.txt"), "h").unwrap();
    let h = percent(base.join("h.txt").to_str().unwrap());
    assert_eq!(d.post(&format!("/files/move?source={h}&destination={dst}"), json!(null)).await.0, 409);
    assert_eq!(d.post(&format!("/files/move?source={src}&destination={dst}"), json!(null)).await.0, 404);

    assert_eq!(d.post(&format!("/files/permissions?path={h}&mode=600"), json!(null)).await.0, 200);
    assert_eq!(std::fs::metadata(base.join("h.txt")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(d.post(&format!("/files/permissions?path={h}&mode=999"), json!(null)).await.0, 400);
    assert_eq!(d.post(&format!("/files/permissions?path={h}&owner=no-such-user-xyz"), json!(null)).await.0, 400);

    let x = percent(base.join("x").to_str().unwrap());
    let (s, b) = d.delete(&format!("/files?path={x}&recursive=false")).await;
    assert_eq!(s, 400, "non-empty dir without recursive: {b}");
    assert!(base.join("x").exists());
    assert_eq!(d.delete(&format!("/files?path={x}&recursive=true")).await.0, 204);
    assert!(!base.join("x").exists());
    assert_eq!(d.delete(&format!("/files?path={x}")).await.0, 404);
}

#[tokio::test]
async fn find_search_replace() {
    let d = TestDaemon::start();
    let base = d.work.join("code");
    std::fs::create_dir_all(base.join("src/.git")).unwrap();
    std::fs::write(base.join("src/main.py"), "import os\nTODO = 1\nprint(TODO)\n").unwrap();
    std::fs::write(base.join("src/util.py"), "def f():\n    return 'TODO'\n").unwrap();
    std::fs::write(base.join("src/.git/config"), "TODO in git internals\n").unwrap();
    std::fs::write(base.join("blob.bin"), b"TODO\0binary").unwrap();
    let root = percent(base.to_str().unwrap());

    let (s, hits) = d.get(&format!("/files/find?path={root}&pattern=TODO")).await;
    assert_eq!(s, 200);
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert_eq!(hits[0]["line"], 2);
    assert!(hits[0]["file"].as_str().unwrap().ends_with("src/main.py"));
    assert_eq!(hits[0]["content"], "TODO = 1");
    let (_, hits) = d.get(&format!("/files/find?path={root}&pattern={}", percent("print("))).await;
    assert_eq!(hits.as_array().unwrap().len(), 1, "an invalid regex is searched literally");

    let (s, found) = d.get(&format!("/files/search?path={root}&pattern={}", percent("*.py"))).await;
    assert_eq!(s, 200);
    assert_eq!(found["files"].as_array().unwrap().len(), 2);
    assert!(found["files"][0].as_str().unwrap().starts_with(base.to_str().unwrap()));

    let files = [base.join("src/main.py"), base.join("src/nope.py")];
    let (s, res) = d.post("/files/replace", json!({"files": files, "pattern": "TODO", "newValue": "DONE"})).await;
    assert_eq!(s, 200);
    assert_eq!(res[0]["success"], true);
    assert_eq!((res[1]["success"].as_bool(), res[1]["error"].is_string()), (Some(false), true));
    assert_eq!(std::fs::read_to_string(base.join("src/main.py")).unwrap(), "import os\nDONE = 1\nprint(DONE)\n");
}

#[tokio::test]
async fn bad_paths_and_parameters_are_4xx() {
    let d = TestDaemon::start();
    assert_eq!(d.get("/files/info").await.0, 400, "missing path");
    assert_eq!(d.get("/files/info?path=%FF%FE").await.0, 400, "non-UTF-8 path");
    assert_eq!(d.get("/files/find?path=/tmp").await.0, 400, "missing pattern");
    assert_eq!(d.post("/files/folder?path=/tmp/x&mode=abc", json!(null)).await.0, 400);
    assert_eq!(d.delete("/files?path=/").await.0, 400);
    let r = d.post_raw("/files/bulk-upload", "multipart/form-data; boundary=zz", "garbage").await;
    assert_eq!(r.status(), 400);
    let (s, _) = d.post("/files/bulk-download", json!({"paths": []})).await;
    assert_eq!(s, 400);
}
