use super::*;

fn meta(ct: &str) -> StreamMeta {
    StreamMeta::new(1, ct.to_string(), Expiry::Never, Offset::ZERO, 0)
}

fn append(body: &str) -> AppendRequest {
    AppendRequest::new(Some("text/plain"), body.to_string(), 0)
}

fn commit(m: &mut StreamMeta, req: &AppendRequest) -> AppendPlan {
    let plan = plan_append(m, req).expect("accepted");
    if let AppendPlan::Write(w) = &plan {
        apply_write(m, w, req.producer.as_ref(), 0);
    }
    plan
}

#[test]
fn json_flattens_one_level_and_keeps_bytes() {
    let body = Bytes::from_static(br#"[{"b":1, "a":2.50}, [1,2], "x"]"#);
    let recs = frame_records(true, &body, true).unwrap();
    let recs: Vec<&[u8]> = recs.iter().map(|r| r.as_ref()).collect();
    assert_eq!(
        recs,
        vec![&br#"{"b":1, "a":2.50},"#[..], b"[1,2],", b"\"x\","]
    );
    let single = frame_records(true, &Bytes::from_static(b" {\"k\":1} "), true).unwrap();
    assert_eq!(single, vec![Bytes::from_static(b"{\"k\":1},")]);
    let nested = frame_records(true, &Bytes::from_static(b"[[[1,2,3]]]"), true).unwrap();
    assert_eq!(nested, vec![Bytes::from_static(b"[[1,2,3]],")]);
}

#[test]
fn json_rejects_invalid_and_empty_arrays_on_append_only() {
    assert!(matches!(
        frame_records(true, &Bytes::from_static(b"{"), true),
        Err(StorageError::InvalidJson(_))
    ));
    assert!(matches!(
        frame_records(true, &Bytes::from_static(b"[1] x"), true),
        Err(StorageError::InvalidJson(_))
    ));
    assert!(matches!(
        frame_records(true, &Bytes::from_static(b" [ ] "), true),
        Err(StorageError::EmptyJsonArray)
    ));
    assert!(
        frame_records(true, &Bytes::from_static(b"[]"), false)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn producer_lifecycle_follows_the_spec_table() {
    let mut m = meta("text/plain");
    assert!(matches!(
        commit(&mut m, &append("a").by_producer("p", 0, 0)),
        AppendPlan::Write(_)
    ));
    assert!(matches!(
        commit(&mut m, &append("b").by_producer("p", 0, 1)),
        AppendPlan::Write(_)
    ));
    // Duplicate echoes the highest accepted seq, not the request's.
    assert_eq!(
        plan_append(&m, &append("a").by_producer("p", 0, 0)).unwrap(),
        AppendPlan::Duplicate(Some((0, 1)))
    );
    assert!(matches!(
        plan_append(&m, &append("c").by_producer("p", 0, 5)),
        Err(StorageError::SeqGap {
            expected: 2,
            received: 5
        })
    ));
    assert!(matches!(
        plan_append(&m, &append("c").by_producer("p", 1, 3)),
        Err(StorageError::EpochMustStartAtZero)
    ));
    assert!(matches!(
        commit(&mut m, &append("c").by_producer("p", 1, 0)),
        AppendPlan::Write(_)
    ));
    assert!(matches!(
        plan_append(&m, &append("z").by_producer("p", 0, 2)),
        Err(StorageError::StaleEpoch {
            current: 1,
            received: 0
        })
    ));
    assert_eq!(m.tail, Offset::new(3, 3));
}

#[test]
fn closed_stream_precedence() {
    let mut m = meta("text/plain");
    let mut close = append("final").by_producer("p", 0, 0);
    close.close = true;
    commit(&mut m, &close);
    assert!(m.closed);
    // Retry of the closing tuple, even with another body, is a duplicate.
    let mut retry = append("other").by_producer("p", 0, 0);
    retry.close = true;
    assert_eq!(
        plan_append(&m, &retry).unwrap(),
        AppendPlan::Duplicate(Some((0, 0)))
    );
    // Closure is checked before content type.
    let mut wrong_type = append("x");
    wrong_type.content_type = Some("application/json".into());
    assert!(matches!(
        plan_append(&m, &wrong_type),
        Err(StorageError::Closed { .. })
    ));
    // Close-only is idempotent.
    let mut close_only = append("");
    close_only.close = true;
    assert_eq!(
        plan_append(&m, &close_only).unwrap(),
        AppendPlan::Duplicate(None)
    );
}

#[test]
fn empty_body_without_close_is_malformed_even_when_closed() {
    let mut m = meta("text/plain");
    let mut close = append("");
    close.close = true;
    commit(&mut m, &close);
    assert!(matches!(
        plan_append(&m, &append("")),
        Err(StorageError::EmptyBody)
    ));
    // Also for a producer retry: the request is malformed before it is a retry.
    assert!(matches!(
        plan_append(&m, &append("").by_producer("p", 0, 0)),
        Err(StorageError::EmptyBody)
    ));
}

#[test]
fn if_match_compares_the_tail() {
    let mut m = meta("text/plain");
    commit(&mut m, &append("ab").if_match(Offset::ZERO));
    assert_eq!(m.tail, Offset::new(1, 2));
    assert!(matches!(
        plan_append(&m, &append("c").if_match(Offset::ZERO)),
        Err(StorageError::PreconditionFailed { tail, closed: false }) if tail == Offset::new(1, 2)
    ));
    // A close-only request is conditional too.
    let mut close = append("").if_match(Offset::new(1, 2));
    close.close = true;
    commit(&mut m, &close);
    assert!(m.closed);
    // Closed: the idempotent close still checks If-Match (412 reports the closure) ...
    let mut stale_close = close.clone();
    stale_close.if_match = Some(Offset::ZERO);
    assert!(matches!(
        plan_append(&m, &stale_close),
        Err(StorageError::PreconditionFailed { closed: true, .. })
    ));
    assert_eq!(
        plan_append(&m, &close).unwrap(),
        AppendPlan::Duplicate(None)
    );
    // ... but data to a closed stream is a 409 first.
    assert!(matches!(
        plan_append(&m, &append("d").if_match(Offset::ZERO)),
        Err(StorageError::Closed { .. })
    ));
}

#[test]
fn if_match_precedence() {
    let mut m = meta("text/plain");
    commit(&mut m, &append("a"));
    // Content type before If-Match.
    let mut wrong = append("x").if_match(Offset::ZERO);
    wrong.content_type = Some("application/json".into());
    assert!(matches!(
        plan_append(&m, &wrong),
        Err(StorageError::ContentTypeMismatch { .. })
    ));
    // Producer headers with If-Match: 400 before the precondition.
    assert!(matches!(
        plan_append(
            &m,
            &append("x").if_match(Offset::ZERO).by_producer("p", 0, 0)
        ),
        Err(StorageError::IfMatchWithProducer)
    ));
    assert!(matches!(
        plan_append(&m, &append("x").if_match(m.tail).by_producer("p", 0, 0)),
        Err(StorageError::IfMatchWithProducer)
    ));
    // If-Match before Stream-Seq.
    let mut seq = append("b");
    seq.stream_seq = Some("5".into());
    commit(&mut m, &seq);
    let mut regress = append("c").if_match(Offset::ZERO);
    regress.stream_seq = Some("1".into());
    assert!(matches!(
        plan_append(&m, &regress),
        Err(StorageError::PreconditionFailed { .. })
    ));
}

#[test]
fn stream_seq_is_bytewise_and_strict() {
    let mut m = meta("text/plain");
    let mut r = append("a");
    r.stream_seq = Some("2".into());
    commit(&mut m, &r);
    r.stream_seq = Some("10".into());
    assert!(matches!(
        plan_append(&m, &r),
        Err(StorageError::SeqRegression { .. })
    ));
    r.stream_seq = Some("2".into());
    assert!(matches!(
        plan_append(&m, &r),
        Err(StorageError::SeqRegression { .. })
    ));
    r.stream_seq = Some("3".into());
    assert!(matches!(plan_append(&m, &r), Ok(AppendPlan::Write(_))));
}

#[test]
fn create_matching_compares_type_expiry_closure_and_fork() {
    let mut m = meta("application/json");
    let req = CreateRequest::new(Some("APPLICATION/JSON; charset=utf-8"), "", 0);
    assert!(create_matches(&m, &req));
    assert!(!create_matches(
        &m,
        &CreateRequest {
            closed: true,
            ..req.clone()
        }
    ));
    assert!(!create_matches(
        &m,
        &CreateRequest {
            expiry: Some(Expiry::Ttl(5)),
            ..req.clone()
        }
    ));
    m.expiry = Expiry::Ttl(5);
    assert!(create_matches(
        &m,
        &CreateRequest {
            expiry: Some(Expiry::Ttl(5)),
            ..req.clone()
        }
    ));
    assert!(!create_matches(&m, &req));
}

#[test]
fn media_types_compare_without_parameters_or_case() {
    assert!(same_type("text/plain", "TEXT/Plain; charset=utf-8"));
    assert!(same_type(" application/json ;x=1", "application/JSON"));
    assert!(!same_type("text/plain", "text/plainx"));
    assert!(!same_type("text/plain", ""));
    assert!(is_json("Application/Json; charset=utf-8"));
    assert!(!is_json("application/json-seq"));
    assert!(is_json(" application/json ;x=1"));
    assert!(is_json("APPLICATION/JSON"));
    for not in [
        "",
        "application/jso",
        "application/octet-stream",
        "text/json",
        "applicationXjson",
    ] {
        assert!(!is_json(not), "{not:?}");
    }
    assert_eq!(essence(" Text/Plain ; q=1"), "text/plain");
}
