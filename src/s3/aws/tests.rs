//! Each operation's request, captured on the wire, carries the SSE-C trio (and the
//! copy-source trio for copies).
use super::error::classify;
use super::listing::url_decode;
use super::*;
use crate::error::FsError;
use aws_smithy_http_client::test_util::capture_request;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

const ALG: &str = "x-amz-server-side-encryption-customer-algorithm";
const KEY: &str = "x-amz-server-side-encryption-customer-key";
const MD5: &str = "x-amz-server-side-encryption-customer-key-md5";
const SRC_ALG: &str = "x-amz-copy-source-server-side-encryption-customer-algorithm";
const SRC_KEY: &str = "x-amz-copy-source-server-side-encryption-customer-key";
const SRC_MD5: &str = "x-amz-copy-source-server-side-encryption-customer-key-md5";

fn key() -> CustomerKey {
    CustomerKey::from_bytes(&[9u8; 32]).unwrap()
}

/// A store whose only key is [`key`].
fn store() -> (
    AwsStore,
    aws_smithy_http_client::test_util::CaptureRequestReceiver,
) {
    ring_store(KeyRing::single(key()))
}

fn ring_store(
    ring: KeyRing,
) -> (
    AwsStore,
    aws_smithy_http_client::test_util::CaptureRequestReceiver,
) {
    store_answering(ring, None)
}

/// A store whose one request gets `answer` (default: 200, empty body).
fn store_answering(
    ring: KeyRing,
    answer: Option<HttpResponse>,
) -> (
    AwsStore,
    aws_smithy_http_client::test_util::CaptureRequestReceiver,
) {
    let (http, rx) = capture_request(answer.map(|r| r.try_into_http1x().unwrap()));
    (store_over(http, ring), rx)
}

/// A believable 206 answer to a ranged GET (an implausible one would be retried, and the
/// capturing client answers only once).
fn ranged_answer(body: &'static [u8], offset: u64, total: u64) -> HttpResponse {
    let mut answer = HttpResponse::new(
        206.try_into().unwrap(),
        aws_smithy_types::body::SdkBody::from(body),
    );
    let end = offset + body.len() as u64 - 1;
    answer
        .headers_mut()
        .insert("content-range", format!("bytes {offset}-{end}/{total}"));
    answer
        .headers_mut()
        .insert("content-length", body.len().to_string());
    answer
}

/// `answer` with the SSE-C echo a server that applied key `k` sends.
fn echoing(mut answer: HttpResponse, k: &CustomerKey) -> HttpResponse {
    let h = answer.headers_mut();
    h.insert(ALG, "AES256");
    h.insert(MD5, k.md5_base64().to_owned());
    answer
}

fn assert_trio(req: &aws_smithy_runtime_api::http::Request, k: &CustomerKey, copy: bool) {
    let h = req.headers();
    assert_eq!(h.get(ALG), Some("AES256"), "{:?}", req.uri());
    assert_eq!(h.get(KEY), Some(k.base64()));
    assert_eq!(h.get(MD5), Some(k.md5_base64()));
    if copy {
        assert_eq!(h.get(SRC_ALG), Some("AES256"));
        assert_eq!(h.get(SRC_KEY), Some(k.base64()));
        assert_eq!(h.get(SRC_MD5), Some(k.md5_base64()));
    } else {
        assert!(h.get(SRC_KEY).is_none());
    }
}

/// A server that ignores SSE-C answers reads too, with whatever it holds: a GET or a HEAD
/// under a key whose answer does not say that key opened it is refused (a HEAD's refusal
/// is an error to retry, EIO, not a verdict that the object is plain).
#[tokio::test]
async fn reads_are_believed_only_with_the_sse_c_echo() {
    let head_answer = || {
        let mut a = HttpResponse::new(
            200.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::empty(),
        );
        a.headers_mut().insert("content-length", "10");
        a
    };
    let (s, _rx) = store_answering(KeyRing::single(key()), Some(head_answer()));
    let e = s.head("a").await.unwrap_err();
    assert!(
        matches!(&e, S3Error::Other { code, .. } if code == "MalformedResponse"),
        "{e:?}"
    );
    let (s, _rx) = store_answering(KeyRing::single(key()), Some(echoing(head_answer(), &key())));
    let info = s.head("a").await.unwrap();
    assert_eq!((info.size, info.sealing), (10, Sealing::PRIMARY));

    // A GET without the echo is asked again (one answer's headers may have been stripped on
    // the way), and refused when no attempt carries it.
    let mut buf = [0u8; 10];
    let (s, asked) = store_answering_always(|| ranged_answer(b"0123456789", 0, 10));
    let e = s
        .get_range(&ReadSource::latest("a", Sealing::PRIMARY), 0, &mut buf)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            S3Error::SseIgnored {
                op: "GetObject",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        5,
        "every attempt made"
    );
    let other = CustomerKey::from_bytes(&[7u8; 32]).unwrap();
    let (s, _) =
        store_answering_always(move || echoing(ranged_answer(b"0123456789", 0, 10), &other));
    assert!(s
        .get_range(&ReadSource::latest("a", Sealing::PRIMARY), 0, &mut buf)
        .await
        .is_err());
    // the echo on a later attempt: believed
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = n.clone();
    let (s, _) = store_answering_always(move || {
        let answer = ranged_answer(b"0123456789", 0, 10);
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            answer
        } else {
            echoing(answer, &key())
        }
    });
    assert_eq!(
        s.get_range(&ReadSource::latest("a", Sealing::PRIMARY), 0, &mut buf)
            .await
            .unwrap(),
        10
    );
    assert_eq!(&buf, b"0123456789");
}

/// A store whose server gives `answer()` to every request, and how many it was asked.
fn store_answering_always(
    answer: impl Fn() -> HttpResponse + Send + Sync + 'static,
) -> (AwsStore, Arc<std::sync::atomic::AtomicUsize>) {
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    let http = aws_smithy_http_client::test_util::infallible_client_fn(move |_req| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        answer().try_into_http1x().unwrap()
    });
    (store_over(http, KeyRing::single(key())), asked)
}

/// An `AwsStore` of bucket `b` whose requests go to `http`.
fn store_over(
    http: impl aws_smithy_runtime_api::client::http::HttpClient + 'static,
    ring: KeyRing,
) -> AwsStore {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .http_client(http)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "AKID", "SECRET", None, None, "test",
        ))
        .endpoint_url("http://127.0.0.1:1")
        .force_path_style(true)
        .build();
    AwsStore::new(
        aws_sdk_s3::Client::from_conf(conf),
        "b".into(),
        Arc::new(ring),
    )
}

#[tokio::test]
async fn every_data_operation_carries_the_key() {
    let k = key();
    let meta = Metadata::new();
    let mut buf = [0u8; 10];

    let (s, rx) = store();
    let _ = s.head("a").await;
    assert_trio(&rx.expect_request(), &k, false);

    // (a believable answer: an empty one would be retried, and this client answers once)
    let answer = echoing(ranged_answer(b"0123456789", 5, 100), &k);
    let (s, rx) = store_answering(KeyRing::single(key()), Some(answer));
    assert_eq!(
        s.get_range(&ReadSource::latest("a", Sealing::PRIMARY), 5, &mut buf)
            .await
            .unwrap(),
        10
    );
    assert_eq!(&buf, b"0123456789");
    let req = rx.expect_request();
    assert_trio(&req, &k, false);
    assert_eq!(req.headers().get("range"), Some("bytes=5-14"));

    let (s, rx) = store();
    let _ = s.put("a", Bytes::from_static(b"x"), &meta).await;
    let req = rx.expect_request();
    assert_trio(&req, &k, false);
    let crc = crc32c_base64(b"x");
    assert_eq!(
        req.headers().get("x-amz-checksum-crc32c"),
        Some(crc.as_str())
    );

    let (s, rx) = store();
    let _ = s
        .copy(&CopyRequest {
            src: "a",
            dst: "b c",
            meta: Some(&meta),
            src_sealing: Sealing::PRIMARY,
        })
        .await;
    let req = rx.expect_request();
    assert_trio(&req, &k, true);
    assert_eq!(req.headers().get("x-amz-copy-source"), Some("b/a"));
    assert_eq!(
        req.headers().get("x-amz-metadata-directive"),
        Some("REPLACE")
    );

    let (s, rx) = store();
    let _ = s.create_multipart("a", &meta).await;
    assert_trio(&rx.expect_request(), &k, false);

    let (s, rx) = store();
    let _ = s.upload_part("a", "u", 1, Bytes::from_static(b"x")).await;
    let req = rx.expect_request();
    assert_trio(&req, &k, false);
    assert_eq!(
        req.headers().get("x-amz-checksum-crc32c"),
        Some(crc.as_str())
    );

    let (s, rx) = store();
    let _ = s
        .upload_part_copy(
            "a",
            "u",
            1,
            &PartSource {
                key: "src key",
                range: 0..10,
                sealing: Sealing::PRIMARY,
                etag: Some("e1"),
            },
        )
        .await;
    let req = rx.expect_request();
    assert_trio(&req, &k, true);
    assert_eq!(req.headers().get("x-amz-copy-source"), Some("b/src%20key"));
    assert_eq!(
        req.headers().get("x-amz-copy-source-range"),
        Some("bytes=0-9")
    );
    assert_eq!(
        req.headers().get("x-amz-copy-source-if-match"),
        Some("\"e1\"")
    );

    let (s, rx) = store();
    let _ = s
        .complete_multipart(
            "a",
            "u",
            vec![CompletedPart {
                number: 1,
                etag: "e".into(),
                crc32c: None,
            }],
        )
        .await;
    assert_trio(&rx.expect_request(), &k, false);
}

#[tokio::test]
async fn writes_name_their_key_and_old_keys_open_copy_sources() {
    let new = CustomerKey::from_bytes(&[1u8; 32]).unwrap();
    let old = CustomerKey::from_bytes(&[2u8; 32]).unwrap();
    let (new_fp, old_b64) = (new.fingerprint().to_owned(), old.base64().to_owned());
    let ring = || {
        KeyRing::new(vec![
            (CustomerKey::from_bytes(&[1u8; 32]).unwrap(), "new".into()),
            (CustomerKey::from_bytes(&[2u8; 32]).unwrap(), "old".into()),
        ])
        .unwrap()
    };
    let meta_fp = format!("x-amz-meta-{KEY_FINGERPRINT_META}");

    let (s, rx) = ring_store(ring());
    let _ = s.put("a", Bytes::from_static(b"x"), &Metadata::new()).await;
    let req = rx.expect_request();
    assert_trio(&req, &new, false);
    assert_eq!(req.headers().get(meta_fp.as_str()), Some(new_fp.as_str()));

    let (s, rx) = ring_store(ring());
    let _ = s.create_multipart("a", &Metadata::new()).await;
    let req = rx.expect_request();
    assert_eq!(req.headers().get(meta_fp.as_str()), Some(new_fp.as_str()));

    // a copy from an object under the old key: source trio of the old key, destination
    // sealed (and tagged) with the new one
    let (s, rx) = ring_store(ring());
    let _ = s
        .copy(&CopyRequest {
            src: "a",
            dst: "b",
            meta: Some(&Metadata::new()),
            src_sealing: Sealing::Key(1),
        })
        .await;
    let req = rx.expect_request();
    assert_eq!(req.headers().get(KEY), Some(new.base64()));
    assert_eq!(req.headers().get(SRC_KEY), Some(old_b64.as_str()));
    assert_eq!(req.headers().get(meta_fp.as_str()), Some(new_fp.as_str()));

    let (s, rx) = store_answering(ring(), Some(echoing(ranged_answer(b"abcd", 0, 100), &old)));
    let mut buf = [0u8; 4];
    let _ = s
        .get_range(&ReadSource::latest("a", Sealing::Key(1)), 0, &mut buf)
        .await;
    assert_eq!(
        rx.expect_request().headers().get(KEY),
        Some(old_b64.as_str())
    );

    // a plain object is read and copied without key headers on its side
    let (s, rx) = store_answering(ring(), Some(ranged_answer(b"abcd", 0, 100)));
    let _ = s
        .get_range(&ReadSource::latest("a", Sealing::Plain), 0, &mut buf)
        .await;
    assert!(rx.expect_request().headers().get(KEY).is_none());
    let (s, rx) = ring_store(ring());
    let _ = s
        .upload_part_copy(
            "a",
            "u",
            1,
            &PartSource {
                key: "src",
                range: 0..4,
                sealing: Sealing::Plain,
                etag: None,
            },
        )
        .await;
    let req = rx.expect_request();
    assert!(req.headers().get(SRC_KEY).is_none());
    assert_eq!(req.headers().get(KEY), Some(new.base64()));
}

fn head_of_x() -> Request {
    Request::object("HeadObject", "x")
}

#[test]
fn errors_classify_by_status_and_code() {
    assert!(matches!(
        classify(head_of_x(), 400, "".into(), "".into()),
        S3Error::WrongKey
    ));
    assert!(matches!(
        classify(head_of_x(), 404, "".into(), "".into()),
        S3Error::NotFound
    ));
    assert!(matches!(
        classify(head_of_x(), 404, "NoSuchBucket".into(), "".into()),
        S3Error::NoSuchBucket
    ));
    assert!(matches!(
        classify(head_of_x(), 403, "InvalidAccessKeyId".into(), "".into()),
        S3Error::BadCredentials(_)
    ));
    assert!(matches!(
        classify(head_of_x(), 403, "AccessDenied".into(), "".into()),
        S3Error::AccessDenied(_)
    ));
    // what a user sees names the request and what the server said, whatever is missing
    let shown = classify(head_of_x(), 403, "AccessDenied".into(), "".into()).to_string();
    assert_eq!(shown, r#"access denied: HeadObject of "x": AccessDenied"#);
    let shown = classify(head_of_x(), 500, "".into(), "".into()).to_string();
    assert_eq!(shown, r#"HeadObject of "x": HTTP 500"#);
    let shown = classify(
        Request::prefix("ListObjectsV2", "d/"),
        503,
        "SlowDown".into(),
        "Please reduce your request rate.".into(),
    )
    .to_string();
    assert_eq!(
        shown,
        r#"ListObjectsV2 of prefix "d/": HTTP 503 SlowDown: Please reduce your request rate."#
    );
}

#[test]
fn a_vanished_upload_is_an_io_error_not_a_missing_file() {
    assert!(matches!(
        classify(head_of_x(), 404, "NoSuchUpload".into(), "".into()),
        S3Error::Other { status: 404, .. }
    ));
}

#[tokio::test]
async fn a_listing_that_is_not_one_is_an_error() {
    let page = |xml: &'static str| {
        HttpResponse::new(
            200.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::from(xml),
        )
    };
    let bad = [
        // a key outside the prefix (a garbled page once panicked the daemon)
        "<ListBucketResult><KeyCount>1</KeyCount><IsTruncated>false</IsTruncated>\
         <Contents><Key>zzz</Key><Size>1</Size></Contents></ListBucketResult>",
        // no size: not "an empty file"
        "<ListBucketResult><KeyCount>1</KeyCount><IsTruncated>false</IsTruncated>\
         <Contents><Key>d/x</Key></Contents></ListBucketResult>",
        // truncated without a way to go on: not "the end"
        "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
        // cut short, as Garage orders a page (KeyCount first) and as AWS does (Name last)
        "<ListBucketResult><Name>b</Name><KeyCount>2</KeyCount><IsTruncated>false</IsTruncated>\
         <Contents><Key>d/x</Key><Size>3</Size></Contents></ListBucketResult>",
        "<ListBucketResult><IsTruncated>false</IsTruncated>\
         <Contents><Key>d/x</Key><Size>3</Size></Contents></ListBucketResult>",
    ];
    for xml in bad {
        let (s, _rx) = store_answering(KeyRing::single(key()), Some(page(xml)));
        let r = s.list("d/", Some("/"), None, None).await;
        assert!(
            matches!(&r, Err(S3Error::Other { code, .. }) if code == "MalformedResponse"),
            "{xml}: {r:?}"
        );
    }
    let (s, _rx) = store_answering(
        KeyRing::single(key()),
        Some(page(
            "<ListBucketResult><IsTruncated>false</IsTruncated>\
             <Contents><Key>d/x</Key><Size>3</Size></Contents>\
             <CommonPrefixes><Prefix>d/e/</Prefix></CommonPrefixes><Name>b</Name>\
             </ListBucketResult>",
        )),
    );
    let p = s.list("d/", Some("/"), None, None).await.unwrap();
    assert_eq!((p.objects[0].size, p.prefixes[0].as_str()), (3, "d/e/"));
}

/// A 200 answer with this body.
fn ok_answer(body: &'static str) -> HttpResponse {
    HttpResponse::new(
        200.try_into().unwrap(),
        aws_smithy_types::body::SdkBody::from(body),
    )
}

#[tokio::test]
async fn listings_ask_for_url_encoded_names_and_decode_them() {
    let (s, rx) = store_answering(
        KeyRing::single(key()),
        Some(ok_answer(
            "<ListBucketResult><EncodingType>url</EncodingType>\
             <KeyCount>5</KeyCount><IsTruncated>false</IsTruncated>\
             <Contents><Key>d%2Fa%01b</Key><Size>1</Size></Contents>\
             <Contents><Key>d%2Fnot%FFutf8</Key><Size>1</Size></Contents>\
             <Contents><Key>d/new%0Aline+and%2Bplus</Key><Size>2</Size></Contents>\
             <CommonPrefixes><Prefix>d%2Fsub%20dir%2F</Prefix></CommonPrefixes>\
             <CommonPrefixes><Prefix>d%2Fcut%2</Prefix></CommonPrefixes>\
             </ListBucketResult>",
        )),
    );
    let p = s.list("d/", Some("/"), None, None).await.unwrap();
    let uri = rx.expect_request().uri().to_owned();
    assert!(uri.contains("encoding-type=url"), "{uri}");
    let keys: Vec<&str> = p.objects.iter().map(|o| o.key.as_str()).collect();
    // (the names that do not decode are skipped, their neighbours listed)
    assert_eq!(keys, ["d/a\x01b", "d/new\nline and+plus"]);
    assert_eq!(p.prefixes, ["d/sub dir/"]);
    assert_eq!(s.warned.lock().unwrap().len(), 2, "each logged");

    // a server that ignores the parameter (no EncodingType): names as they are
    let (s, _rx) = store_answering(
        KeyRing::single(key()),
        Some(ok_answer(
            "<ListBucketResult><KeyCount>1</KeyCount><IsTruncated>false</IsTruncated>\
             <Contents><Key>d/100%25+x</Key><Size>1</Size></Contents></ListBucketResult>",
        )),
    );
    let p = s.list("d/", Some("/"), None, None).await.unwrap();
    assert_eq!(p.objects[0].key, "d/100%25+x");
}

#[tokio::test]
async fn upload_listings_ask_for_url_encoded_names_and_decode_them() {
    let (s, rx) = store_answering(
        KeyRing::single(key()),
        Some(ok_answer(
            "<ListMultipartUploadsResult><EncodingType>url</EncodingType>\
             <IsTruncated>false</IsTruncated>\
             <Upload><Key>d%2Fa%01b</Key><UploadId>u1</UploadId></Upload>\
             <Upload><Key>d%2F%FF</Key><UploadId>u2</UploadId></Upload>\
             </ListMultipartUploadsResult>",
        )),
    );
    let ups = s.list_multipart("d/").await.unwrap();
    let uri = rx.expect_request().uri().to_owned();
    assert!(uri.contains("encoding-type=url"), "{uri}");
    let keys: Vec<(&str, &str)> = ups
        .iter()
        .map(|u| (u.key.as_str(), u.upload_id.as_str()))
        .collect();
    assert_eq!(keys, [("d/a\x01b", "u1")]);
}

/// What an unencoded listing holding a control character got from Garage: an answer the
/// SDK cannot parse, once shown as `S3 error 200 : `. The error names the request.
#[tokio::test]
async fn an_unreadable_answer_names_the_request_and_the_cause() {
    let (s, _rx) = store_answering(
        KeyRing::single(key()),
        Some(ok_answer(
            "<ListBucketResult><Contents><Key>d/a\x01b</Key><Size>1</Size></Contents>\
             </ListBucketResult>",
        )),
    );
    let e = s.list("d/", Some("/"), None, None).await.unwrap_err();
    assert!(
        matches!(e, S3Error::Unreadable { status: 200, .. }),
        "{e:?}"
    );
    let shown = e.to_string();
    let head = r#"ListObjectsV2 of prefix "d/": unreadable answer (HTTP 200): "#;
    assert!(
        shown.starts_with(head) && shown.len() > head.len() + 5,
        "{shown}"
    );
    assert_eq!(FsError::from(e).errno(), libc::EIO);
}

#[test]
fn url_decoding_is_strict() {
    assert_eq!(url_decode("a%2Fb+c%2B").as_deref(), Some("a/b c+"));
    assert_eq!(url_decode("%E2%82%AC%01").as_deref(), Some("\u{20ac}\x01"));
    for bad in ["%", "%2", "%G1", "%+1", "%FF", "%C3"] {
        assert_eq!(url_decode(bad), None, "{bad}");
    }
}

#[test]
fn multipart_etag_is_the_s3_formula() {
    // seen from Garage 2.5: parts "93df…", "cf24…" → "592e…-2"
    let parts = [
        "93dfd2677368616ebfe77bc0594edff2",
        "cf247707c1a156f4080ab419a35a6d4b",
    ]
    .iter()
    .enumerate()
    .map(|(i, e)| CompletedPart {
        number: i as i32 + 1,
        etag: format!("\"{e}\""),
        crc32c: None,
    })
    .collect::<Vec<_>>();
    assert_eq!(
        multipart_etag(&parts).as_deref(),
        Some("592e5223a4ddcdfe652e0c15c7e25925-2")
    );
    let odd = [CompletedPart {
        number: 1,
        etag: "not-md5".into(),
        crc32c: None,
    }];
    assert_eq!(multipart_etag(&odd), None);
}

#[test]
fn content_range_parses() {
    assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9)));
    assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5)));
    assert_eq!(parse_content_range("bytes */100"), None);
    assert_eq!(parse_content_range("garbage"), None);
}

#[tokio::test]
async fn plain_http_needs_allow_http() {
    let conn = Connection {
        endpoint: Some("http://127.0.0.1:3900".into()),
        ..Default::default()
    };
    let err = build_client(&conn).await.unwrap_err().to_string();
    assert!(err.contains("--allow-http"), "{err}");
}
