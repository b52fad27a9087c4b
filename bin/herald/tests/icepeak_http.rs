//! The Icepeak HTTP API on the real binary (seed-contracts 1.2): GET/PUT/DELETE status codes,
//! bodies and content types, insert semantics, `?durable`, method handling.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn get_returns_the_exact_value_with_icepeaks_content_type() {
    let s = start(&[]).await;
    icepeak_put(&s, "/foo", r#"{"a":123,"b":[1,"x",null,true]}"#).await;

    let r = get(&format!("{}/foo", s.icepeak_url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.json(), json!({"a":123,"b":[1,"x",null,true]}));

    // Scalars come back bare.
    let r = get(&format!("{}/foo/a", s.icepeak_url())).await;
    assert_eq!((r.status, r.body.as_str()), (200, "123"));
    let r = get(&format!("{}/foo/b", s.icepeak_url())).await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"[1,"x",null,true]"#));
    icepeak_put(&s, "/str", r#""hello""#).await;
    let r = get(&format!("{}/str", s.icepeak_url())).await;
    assert_eq!((r.status, r.body.as_str()), (200, r#""hello""#));
    stop(s).await;
}

#[tokio::test]
async fn missing_paths_and_non_object_intermediates_are_404_with_an_empty_body() {
    let s = start(&[]).await;
    icepeak_put(&s, "/x", r#"{"n":1,"arr":[{"k":1}],"nul":null,"obj":{}}"#).await;
    for path in [
        "/nope",
        "/nope/deeper",
        "/x/missing",
        "/x/n/below",
        "/x/arr/0",
        "/x/arr/0/k",
        "/x/nul/k",
        "/x/obj/k",
    ] {
        let r = get(&format!("{}{path}", s.icepeak_url())).await;
        assert_eq!(r.status, 404, "GET {path}: {r:?}");
        assert_eq!(r.body, "", "GET {path}");
    }
    stop(s).await;
}

#[tokio::test]
async fn get_root_returns_the_whole_document() {
    let s = start(&[]).await;
    assert_eq!(get_json(&format!("{}/", s.icepeak_url())).await, json!({}));
    icepeak_put(&s, "/a/b", "1").await;
    icepeak_put(&s, "/c", r#""d""#).await;
    let r = get(&format!("{}/", s.icepeak_url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"a":{"b":1},"c":"d"}));
    // Without the slash too.
    let r = get(&s.icepeak_url()).await;
    assert_eq!(r.json(), json!({"a":{"b":1},"c":"d"}));
    stop(s).await;
}

#[tokio::test]
async fn put_is_202_with_an_empty_body_and_durable_put_is_visible_immediately() {
    let s = start(&[]).await;
    for i in 0..20 {
        let url = format!("{}/counter?durable", s.icepeak_url());
        let r = put(&url, &i.to_string()).await;
        assert_eq!(r.status, 202, "{r:?}");
        assert_eq!(r.body, "");
        // The very next read sees it.
        assert_eq!(icepeak_get(&s, "/counter").await, Some(json!(i)));
    }
    // `durable` with a value counts too (only its presence matters).
    let r = put(&format!("{}/v?durable=false", s.icepeak_url()), "7").await;
    assert_eq!(r.status, 202);
    assert_eq!(icepeak_get(&s, "/v").await, Some(json!(7)));

    // Without `durable` the write is still applied, just not awaited.
    let r = put(&format!("{}/lazy", s.icepeak_url()), "true").await;
    assert_eq!((r.status, r.body.as_str()), (202, ""));
    within("non-durable write becomes visible", async {
        while icepeak_get(&s, "/lazy").await != Some(json!(true)) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    stop(s).await;
}

#[tokio::test]
async fn put_follows_icepeaks_insert_semantics() {
    let s = start(&[]).await;
    // Missing intermediates are created as objects.
    icepeak_put(&s, "/so/hot/today", "1").await;
    assert_eq!(
        icepeak_get(&s, "/").await,
        Some(json!({"so":{"hot":{"today":1}}}))
    );
    // A sibling key merges into the existing object.
    icepeak_put(&s, "/so/cool", r#""yes""#).await;
    assert_eq!(
        icepeak_get(&s, "/so").await,
        Some(json!({"hot":{"today":1},"cool":"yes"}))
    );
    // Non-objects on the way are replaced by an object holding the new key.
    icepeak_put(&s, "/so/cool/x", "2").await;
    assert_eq!(icepeak_get(&s, "/so/cool").await, Some(json!({"x":2})));
    icepeak_put(&s, "/arr", "[1,2,3]").await;
    icepeak_put(&s, "/arr/0", r#""zero""#).await;
    assert_eq!(icepeak_get(&s, "/arr").await, Some(json!({"0":"zero"})));
    icepeak_put(&s, "/nul", "null").await;
    icepeak_put(&s, "/nul/a/b", "3").await;
    assert_eq!(icepeak_get(&s, "/nul").await, Some(json!({"a":{"b":3}})));
    // PUT null stores an explicit null.
    icepeak_put(&s, "/so/hot", "null").await;
    let r = get(&format!("{}/so/hot", s.icepeak_url())).await;
    assert_eq!((r.status, r.body.as_str()), (200, "null"));
    assert_eq!(
        icepeak_get(&s, "/so").await,
        Some(json!({"hot":null,"cool":{"x":2}}))
    );
    // PUT / replaces the whole document, with any JSON value.
    icepeak_put(&s, "/", r#"{"fresh":true}"#).await;
    assert_eq!(icepeak_get(&s, "/").await, Some(json!({"fresh":true})));
    assert_eq!(icepeak_get(&s, "/so").await, None);
    icepeak_put(&s, "/", "42").await;
    assert_eq!(icepeak_get(&s, "/").await, Some(json!(42)));
    assert_eq!(icepeak_get(&s, "/fresh").await, None);
    // Writing below a scalar root turns the root into an object.
    icepeak_put(&s, "/k", "1").await;
    assert_eq!(icepeak_get(&s, "/").await, Some(json!({"k":1})));
    stop(s).await;
}

#[tokio::test]
async fn delete_removes_the_key_and_is_202_even_when_nothing_changes() {
    let s = start(&[]).await;
    icepeak_put(&s, "/", r#"{"a":{"b":1,"c":2},"s":5}"#).await;

    let r = delete(&format!("{}/a/b?durable", s.icepeak_url())).await;
    assert_eq!((r.status, r.body.as_str()), (202, ""));
    assert_eq!(icepeak_get(&s, "/").await, Some(json!({"a":{"c":2},"s":5})));

    // Missing path, missing parent, non-object parent: 202 and no change.
    for path in ["/a/zzz", "/nope/deeper", "/s/x", "/a/c/x"] {
        let r = delete(&format!("{}{path}?durable", s.icepeak_url())).await;
        assert_eq!((r.status, r.body.as_str()), (202, ""), "DELETE {path}");
    }
    assert_eq!(icepeak_get(&s, "/").await, Some(json!({"a":{"c":2},"s":5})));

    // DELETE / makes the whole document null.
    let r = delete(&format!("{}/?durable", s.icepeak_url())).await;
    assert_eq!(r.status, 202);
    let r = get(&format!("{}/", s.icepeak_url())).await;
    assert_eq!((r.status, r.body.as_str()), (200, "null"));
    assert_eq!(icepeak_get(&s, "/a").await, None);
    stop(s).await;
}

#[tokio::test]
async fn non_standard_methods_get_400_with_an_empty_json_object() {
    let s = start(&[]).await;
    for m in ["FOO", "PROPFIND", "get"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let r = send(client().request(method, format!("{}/a", s.icepeak_url()))).await;
        assert_eq!(r.status, 400, "{m}: {r:?}");
        assert_eq!(r.body, "{}", "{m}");
        assert_eq!(r.content_type.as_deref(), Some("application/json"), "{m}");
    }
    stop(s).await;
}

#[tokio::test]
async fn standard_methods_without_a_route_are_404() {
    let s = start(&[]).await;
    icepeak_put(&s, "/a", "1").await;
    let r = send(client().post(format!("{}/a", s.icepeak_url())).body("2")).await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = send(client().patch(format!("{}/a", s.icepeak_url())).body("2")).await;
    assert_eq!(r.status, 404, "{r:?}");
    // Nothing changed.
    assert_eq!(icepeak_get(&s, "/a").await, Some(json!(1)));
    stop(s).await;
}

#[tokio::test]
async fn put_accepts_any_or_no_content_type() {
    let s = start(&[]).await;
    // reqwest sends a String body with no Content-Type header at all.
    let r = put(&format!("{}/none?durable", s.icepeak_url()), r#"{"x":1}"#).await;
    assert_eq!(r.status, 202);
    assert_eq!(icepeak_get(&s, "/none").await, Some(json!({"x":1})));
    // Checked on the wire too: a request without any Content-Type header.
    let r = raw_request(s.addr("icepeak"), "PUT", "/raw?durable", &[], b"[1]").await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(icepeak_get(&s, "/raw").await, Some(json!([1])));
    // curl's default form type, and text/plain, are not checked either.
    for ct in ["application/x-www-form-urlencoded", "text/plain"] {
        let r = send(
            client()
                .put(format!("{}/ct?durable", s.icepeak_url()))
                .header("Content-Type", ct)
                .body(format!("\"{ct}\"")),
        )
        .await;
        assert_eq!(r.status, 202, "{ct}");
        assert_eq!(icepeak_get(&s, "/ct").await, Some(json!(ct)));
    }
    stop(s).await;
}

#[tokio::test]
async fn percent_encoded_segments_are_object_keys() {
    let s = start(&[]).await;
    icepeak_put(&s, "/a%2Fb/c%20d", "1").await;
    assert_eq!(icepeak_get(&s, "/").await, Some(json!({"a/b":{"c d":1}})));
    assert_eq!(icepeak_get(&s, "/a/b").await, None);
    // Doubled and trailing slashes are skipped.
    assert_eq!(icepeak_get(&s, "//a%2Fb//c%20d/").await, Some(json!(1)));
    stop(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_503_and_every_202_is_applied() {
    let s = start(&["--queue-capacity", "1"]).await;
    let c = client();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let rb = c
                .put(format!("{}/q/k{i}", s.icepeak_url()))
                .body(i.to_string());
            tokio::spawn(async move { (i, send(rb).await) })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (i, r) = within("writer", t).await.unwrap();
        match r.status {
            202 => accepted.push(i),
            503 => refused += 1,
            _ => panic!("unexpected answer {r:?}"),
        }
    }
    eprintln!("{} accepted, {refused} refused with 503", accepted.len());
    assert!(!accepted.is_empty());
    // A durable write is ordered after every accepted one.
    let mut r = put(&format!("{}/q/done?durable", s.icepeak_url()), "true").await;
    while r.status == 503 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        r = put(&format!("{}/q/done?durable", s.icepeak_url()), "true").await;
    }
    assert_eq!(r.status, 202);
    let tree = icepeak_get(&s, "/q").await.unwrap();
    for i in accepted {
        assert_eq!(tree[format!("k{i}")], json!(i), "accepted write k{i} lost");
    }
    assert_eq!(tree.as_object().unwrap().len() - 1, 200 - refused);
    stop(s).await;
}
