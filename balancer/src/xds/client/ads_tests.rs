//! The ADS state machine with a made-up resource type: a resource's bytes
//! are `name` or `name=value`; `name=!` is invalid.

use super::*;

const THING: &str = "type.googleapis.com/test.Thing";
const WHOLE: &str = "type.googleapis.com/test.Whole";

fn decode(any: &Any) -> Result<(String, Value), ResourceError> {
    let text = String::from_utf8(any.value.clone()).map_err(|_| ResourceError {
        name: None,
        message: "not UTF-8".into(),
    })?;
    let (name, value) = text.split_once('=').unwrap_or((&text, ""));
    if value == "!" {
        return Err(ResourceError {
            name: Some(name.to_owned()),
            message: "value is !".into(),
        });
    }
    Ok((name.to_owned(), Arc::new(value.to_owned())))
}

static THINGS: ResourceType = ResourceType {
    type_url: THING,
    full_state: false,
    decode,
};
static WHOLES: ResourceType = ResourceType {
    type_url: WHOLE,
    full_state: true,
    decode,
};

fn state() -> AdsState {
    let node = Node {
        id: "node-1".into(),
        ..Default::default()
    };
    AdsState::new(node, &[&THINGS, &WHOLES], false)
}

fn response(type_url: &str, version: &str, nonce: &str, resources: &[&str]) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        nonce: nonce.into(),
        type_url: type_url.into(),
        resources: resources
            .iter()
            .map(|r| Any {
                type_url: type_url.into(),
                value: r.as_bytes().to_vec(),
            })
            .collect(),
        ..Default::default()
    }
}

fn value_of(event: &Event) -> Option<String> {
    match event {
        Event::Changed { value, .. } => value.downcast_ref::<String>().cloned(),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn requests_carry_the_node_once_and_every_name() {
    let mut ads = state();
    let now = Instant::now();
    // Before a stream: cached only.
    let (status, value, request) = ads.subscribe(THING, "a", now);
    assert_eq!(status, Some(ResourceStatus::Requested));
    assert!(value.is_none() && request.is_none());
    let requests = ads.stream_started(now);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].node.as_ref().unwrap().id, "node-1");
    assert_eq!(requests[0].resource_names, ["a"]);
    let (_, _, request) = ads.subscribe(THING, "b", now);
    let request = request.unwrap();
    assert!(
        request.node.is_none(),
        "the node goes in the stream's first request only"
    );
    assert_eq!(request.resource_names, ["a", "b"]);
    // A second watcher of "b" sends nothing; the last one leaving does.
    assert!(ads.subscribe(THING, "b", now).2.is_none());
    assert!(ads.unsubscribe(THING, "b").is_none());
    assert_eq!(ads.unsubscribe(THING, "b").unwrap().resource_names, ["a"]);
    // A type the client does not know: no status, nothing sent, no panic.
    let (status, value, request) = ads.subscribe("type.googleapis.com/nope", "x", now);
    assert!(status.is_none() && value.is_none() && request.is_none());
    assert!(ads.unsubscribe("type.googleapis.com/nope", "x").is_none());
}

#[tokio::test(start_paused = true)]
async fn ack_then_nack_keeps_the_last_good_version_and_values() {
    let mut ads = state();
    let now = Instant::now();
    ads.stream_started(now);
    ads.subscribe(THING, "a", now);
    ads.subscribe(THING, "b", now);
    let (ack, events) = ads.response(response(THING, "v1", "n1", &["a=1", "b=1"]));
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("v1", "n1")
    );
    assert!(ack.error_detail.is_none());
    assert_eq!(
        events.iter().filter_map(value_of).collect::<Vec<_>>(),
        ["1", "1"]
    );

    // b is invalid in v2: NACK with v1, a's new value still taken.
    let (nack, events) = ads.response(response(THING, "v2", "n2", &["a=2", "b=!"]));
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("v1", "n2")
    );
    let detail = nack.error_detail.unwrap();
    assert_eq!(detail.code, 3);
    assert!(
        detail
            .message
            .contains("resource index 1: b: INVALID_ARGUMENT: value is !"),
        "{}",
        detail.message
    );
    assert!(matches!(&events[0], Event::Changed { name, .. } if name == "a"));
    assert!(matches!(&events[1], Event::Refused { name, .. } if name == "b"));
    let statuses = ads.statuses();
    assert!(statuses.contains(&(
        THING.into(),
        "b".into(),
        ResourceStatus::Nacked {
            version: "v2".into(),
            error: "value is !".into()
        }
    )));
    // b's cached value is still v1's.
    let (_, value, _) = ads.subscribe(THING, "b", now);
    assert_eq!(value.unwrap().downcast_ref::<String>().unwrap(), "1");

    // The next valid response is ACKed; an unchanged resource is no event.
    let (ack, events) = ads.response(response(THING, "v3", "n3", &["a=2", "b=3"]));
    assert_eq!(ack.version_info, "v3");
    assert!(ack.error_detail.is_none());
    assert_eq!(events.len(), 1, "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn full_state_types_delete_what_a_response_leaves_out() {
    let mut ads = state();
    let now = Instant::now();
    ads.stream_started(now);
    ads.subscribe(WHOLE, "x", now);
    ads.subscribe(WHOLE, "y", now);
    ads.subscribe(THING, "t", now);
    ads.response(response(WHOLE, "1", "n1", &["x=1", "y=1"]));
    ads.response(response(THING, "1", "n2", &["t=1"]));
    // LDS/CDS-like: y left out → gone. RDS/EDS-like: nothing left out means anything.
    let (_, events) = ads.response(response(WHOLE, "2", "n3", &["x=1"]));
    assert!(matches!(&events[..], [Event::DoesNotExist { name, .. }] if name == "y"));
    let (_, events) = ads.response(response(THING, "2", "n4", &[]));
    assert!(events.is_empty());

    // With ignore_resource_deletion, nothing is deleted.
    let mut keeping = AdsState::new(Node::default(), &[&WHOLES], true);
    keeping.stream_started(now);
    keeping.subscribe(WHOLE, "x", now);
    keeping.response(response(WHOLE, "1", "n1", &["x=1"]));
    let (_, events) = keeping.response(response(WHOLE, "2", "n2", &[]));
    assert!(events.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_resource_never_sent_does_not_exist_after_15_s_of_stream() {
    let mut ads = state();
    let start = Instant::now();
    ads.subscribe(THING, "late", start);
    // No stream: no timer.
    assert_eq!(ads.next_deadline(), None);
    ads.stream_started(start);
    assert_eq!(ads.next_deadline(), Some(start + DOES_NOT_EXIST_TIMEOUT));
    assert!(ads.expire(start + Duration::from_secs(14)).is_empty());
    // The stream drops and comes back: the timer starts over.
    ads.stream_ended();
    assert_eq!(ads.next_deadline(), None);
    let again = start + Duration::from_secs(20);
    ads.stream_started(again);
    assert!(ads.expire(again + Duration::from_secs(14)).is_empty());
    let events = ads.expire(again + DOES_NOT_EXIST_TIMEOUT);
    assert!(matches!(&events[..], [Event::DoesNotExist { name, .. }] if name == "late"));
    // A resource that arrived stops its timer.
    ads.subscribe(THING, "prompt", again);
    ads.response(response(THING, "1", "n1", &["prompt=1"]));
    assert_eq!(ads.next_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn a_new_stream_rerequests_with_the_accepted_version_and_no_nonce() {
    let mut ads = state();
    let now = Instant::now();
    ads.stream_started(now);
    ads.subscribe(THING, "a", now);
    ads.response(response(THING, "v7", "n9", &["a=1"]));
    ads.stream_ended();
    let requests = ads.stream_started(now);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].version_info, "v7");
    assert_eq!(requests[0].response_nonce, "");
    assert!(requests[0].node.is_some());
}

#[tokio::test(start_paused = true)]
async fn garbage_is_refused_not_fatal() {
    let mut ads = state();
    let now = Instant::now();
    ads.stream_started(now);
    ads.subscribe(THING, "a", now);
    // An unknown type, a resource of the wrong type, bytes that do not
    // decode, and a duplicate: each a NACK, none a panic.
    let (nack, _) = ads.response(response("type.googleapis.com/unknown", "1", "n1", &["a"]));
    assert!(
        nack.error_detail
            .unwrap()
            .message
            .contains("unknown resource type")
    );
    let mut wrong = response(THING, "1", "n2", &["a=1"]);
    wrong.resources[0].type_url = WHOLE.into();
    assert!(ads.response(wrong).0.error_detail.is_some());
    let mut binary = response(THING, "1", "n3", &[]);
    binary.resources.push(Any {
        type_url: THING.into(),
        value: vec![0xff, 0xfe],
    });
    assert!(ads.response(binary).0.error_detail.is_some());
    let (nack, events) = ads.response(response(THING, "1", "n4", &["a=1", "a=2"]));
    assert!(nack.error_detail.unwrap().message.contains("duplicate"));
    assert_eq!(
        events.iter().filter_map(value_of).collect::<Vec<_>>(),
        ["1"]
    );
}
