use super::*;

const APP: &str = include_str!("testdata/app.list");
const MORE: &str = include_str!("testdata/app-more.list");

/// The fingerprint's keys of the listed databases' tables and sequences.
fn known(keys: &[&str]) -> BTreeMap<String, (String, String)> {
    keys.iter()
        .map(|k| ((*k).to_owned(), unquote_qualified(k).unwrap()))
        .collect()
}

fn tables() -> BTreeMap<String, (String, String)> {
    known(&[
        "app.items",
        "app.other",
        "app.child",
        "app.events",
        "public.t2",
    ])
}

fn sequences() -> BTreeMap<String, (String, String)> {
    known(&["app.items_id_seq", "app.shared_seq", "app.events_id_seq"])
}

fn filter(tables: &[&str]) -> Filter {
    Filter {
        tables: tables
            .iter()
            .map(|t| TablePattern::parse("--table", t).unwrap())
            .collect(),
        ..Filter::default()
    }
}

fn selected(listing: &str, patterns: &[&str], present: &[u32]) -> (Toc, Selection) {
    let toc = Toc::parse(listing).unwrap();
    let chosen = toc.tables(&tables(), &filter(patterns)).unwrap();
    let present = present.iter().copied().collect();
    let selection = toc.select(chosen, &present, &sequences()).unwrap();
    (toc, selection)
}

fn listed(toc: &Toc, selection: &Selection) -> Vec<String> {
    toc.use_list(selection)
        .lines()
        .map(|l| l.split_once("; ").unwrap().1.to_owned())
        .collect()
}

#[test]
fn a_table_comes_with_what_it_needs_and_what_is_attached_to_it() {
    let (toc, selection) = selected(APP, &["app.items"], &[]);
    assert_eq!(
        listed(&toc, &selection),
        [
            "SCHEMA - app postgres",
            "TYPE app mood postgres",
            "FUNCTION app positive(integer) postgres",
            "TABLE app items postgres",
            "COMMENT app TABLE items postgres",
            "SEQUENCE app items_id_seq postgres",
            "SEQUENCE OWNED BY app items_id_seq postgres",
            "DEFAULT app items id postgres",
            "TABLE DATA app items postgres",
            "SEQUENCE SET app items_id_seq postgres",
            "CONSTRAINT app items items_pkey postgres",
            "INDEX app items_note postgres",
        ]
    );
    assert_eq!(selection.tables.len(), 1);
    assert_eq!(selection.tables[0].key.as_deref(), Some("app.items"));
    assert_eq!(selection.sequences, ["app.items_id_seq"]);
    assert_eq!(
        selection.created,
        [
            "SCHEMA - app postgres",
            "TYPE app mood postgres",
            "FUNCTION app positive(integer) postgres"
        ]
    );
    // Another table's foreign key to it is that table's business.
    assert!(selection.left_out.is_empty(), "{:?}", selection.left_out);
}

#[test]
fn a_foreign_key_to_a_table_left_out_is_named_with_the_way_to_add_it() {
    let (toc, selection) = selected(APP, &["app.other"], &[]);
    let list = listed(&toc, &selection);
    assert!(list.contains(&"TABLE DATA app other postgres".to_owned()));
    assert!(!list.iter().any(|l| l.contains("other_item_fkey")));
    assert!(
        !list.iter().any(|l| l.contains("items_id_seq")),
        "another table's sequence stays out: {list:?}"
    );
    assert_eq!(selection.left_out.len(), 1, "{:?}", selection.left_out);
    assert!(selection.left_out[0].0.contains("other_item_fkey"));
    assert!(selection.left_out[0].1.contains("TABLE app items"));
    assert!(selection.left_out[0].1.contains("--table"));
    // Both tables: the key comes too.
    let (toc, selection) = selected(APP, &["app.other", "app.items"], &[]);
    assert!(
        listed(&toc, &selection)
            .iter()
            .any(|l| l.contains("other_item_fkey"))
    );
    assert!(selection.left_out.is_empty());
}

#[test]
fn what_the_target_has_is_used_as_it_is_and_its_decorations_stay_untouched() {
    let toc = Toc::parse(APP).unwrap();
    let chosen = toc.tables(&tables(), &filter(&["app.items"])).unwrap();
    let shared: Vec<String> = toc
        .shared_needs(&chosen)
        .unwrap()
        .iter()
        .map(|e| e.describe())
        .collect();
    assert_eq!(
        shared,
        [
            "SCHEMA - app postgres",
            "TYPE app mood postgres",
            "FUNCTION app positive(integer) postgres",
            "SEQUENCE app items_id_seq postgres",
        ]
    );
    let (toc, selection) = selected(APP, &["app.items"], &[6, 843, 220]);
    let list = listed(&toc, &selection);
    assert!(
        !list
            .iter()
            .any(|l| l.starts_with("SCHEMA") || l.starts_with("TYPE"))
    );
    assert!(list.contains(&"TABLE app items postgres".to_owned()));
    assert_eq!(selection.present.len(), 3);
    assert!(selection.created.is_empty(), "{:?}", selection.created);
}

#[test]
fn partitions_children_identity_and_triggers_come_along() {
    let (toc, selection) = selected(MORE, &["app.events"], &[]);
    let list = listed(&toc, &selection);
    for wanted in [
        "TABLE app events_2026 postgres",
        "TABLE ATTACH app events_2026 postgres",
        "TABLE DATA app events_2026 postgres",
        "SEQUENCE app events_id_seq postgres",
        "SEQUENCE SET app events_id_seq postgres",
    ] {
        assert!(list.contains(&wanted.to_owned()), "{wanted}: {list:?}");
    }
    assert_eq!(selection.tables.len(), 2);
    assert!(selection.tables.iter().any(|t| t.key.is_none()));

    let (toc, selection) = selected(MORE, &["app.other"], &[]);
    let list = listed(&toc, &selection);
    assert!(
        list.contains(&"TABLE DATA app child postgres".to_owned()),
        "{list:?}"
    );
    // An inheritance child, a table of its own, can be left out; a partition cannot.
    let toc = Toc::parse(MORE).unwrap();
    let mut without_child = filter(&["app.other", "app.events"]);
    without_child.exclude = vec![
        TablePattern::parse("--exclude-table", "app.child").unwrap(),
        TablePattern::parse("--exclude-table", "app.events_2026").unwrap(),
    ];
    let chosen = toc.tables(&tables(), &without_child).unwrap();
    let ids: Vec<u32> = chosen.iter().map(|t| t.id).collect();
    assert!(!ids.contains(&223), "app.child left out: {ids:?}");
    assert!(ids.contains(&222), "the partition comes: {ids:?}");

    let (toc, selection) = selected(MORE, &["app.items"], &[]);
    let list = listed(&toc, &selection);
    assert!(list.contains(&"TRIGGER app items t postgres".to_owned()));
    assert!(list.contains(&"FUNCTION app trg() postgres".to_owned()));
    assert!(list.contains(&"ACL app TABLE items postgres".to_owned()));
    // A sequence another table owns is made alone, with its value but without its
    // OWNED BY (which would need that table).
    assert!(list.contains(&"SEQUENCE app shared_seq postgres".to_owned()));
    assert!(list.contains(&"SEQUENCE SET app shared_seq postgres".to_owned()));
    assert!(
        !list
            .iter()
            .any(|l| l.starts_with("SEQUENCE OWNED BY app shared_seq"))
    );
    assert!(!list.iter().any(|l| l.starts_with("VIEW")));
}

#[test]
fn a_child_brings_its_parent_s_definition_without_its_rows() {
    let (toc, selection) = selected(MORE, &["app.child"], &[]);
    let list = listed(&toc, &selection);
    assert!(
        list.contains(&"TABLE app other postgres".to_owned()),
        "{list:?}"
    );
    assert!(list.contains(&"TABLE DATA app child postgres".to_owned()));
    assert!(!list.contains(&"TABLE DATA app other postgres".to_owned()));
    assert!(
        selection
            .created
            .iter()
            .any(|c| c == "TABLE app other postgres")
    );
    assert_eq!(selection.tables.len(), 1);
    // A target that has the parent uses it.
    let (toc, selection) = selected(MORE, &["app.child"], &[217]);
    assert!(!listed(&toc, &selection).contains(&"TABLE app other postgres".to_owned()));
}

#[test]
fn schemas_and_exclusions_select_as_pg_dump_s_do() {
    let toc = Toc::parse(MORE).unwrap();
    let by_schema = Filter {
        schemas: vec![SchemaPattern::parse("--schema", "app").unwrap()],
        exclude: vec![TablePattern::parse("--exclude-table", "app.ev*").unwrap()],
        ..Filter::default()
    };
    let keys: BTreeSet<Option<String>> = toc
        .tables(&tables(), &by_schema)
        .unwrap()
        .into_iter()
        .map(|t| t.key)
        .collect();
    let want: BTreeSet<Option<String>> = ["app.items", "app.other", "app.child"]
        .iter()
        .map(|k| Some((*k).to_owned()))
        .collect();
    assert_eq!(keys, want);
}

#[test]
fn an_ambiguous_line_is_refused() {
    let toc = Toc::parse("5; 1259 1 TABLE a b c owner\n").unwrap();
    let tables = BTreeMap::from([
        ("\"a b\".c".to_owned(), ("a b".to_owned(), "c".to_owned())),
        ("a.\"b c\"".to_owned(), ("a".to_owned(), "b c".to_owned())),
    ]);
    let err = toc.tables(&tables, &Filter::default()).unwrap_err();
    assert!(err.to_string().contains("cannot tell"), "{err}");
    // Nobody asked for either: nothing to refuse.
    let other = filter(&["x.y"]);
    assert!(toc.tables(&tables, &other).unwrap().is_empty());
}

#[test]
fn listings_pgproof_does_not_understand_are_refused() {
    assert!(Toc::parse("5; 1259 1 NO SUCH KIND x y\n").is_err());
    assert!(Toc::parse(";\tdepends on: 1\n").is_err());
    assert!(Toc::parse("3; 0 1 TABLE DATA a b c\n").is_err());
}

#[test]
fn fingerprint_keys_unquote() {
    assert_eq!(
        unquote_qualified("\"My \"\"S\"\".x\".t"),
        Some(("My \"S\".x".to_owned(), "t".to_owned()))
    );
    assert_eq!(
        unquote_qualified("a.b"),
        Some(("a".to_owned(), "b".to_owned()))
    );
    assert_eq!(unquote_qualified("ab"), None);
    assert_eq!(unquote_qualified("\"a.b"), None);
}
