//! An archive's table of contents as `pg_restore --list --verbose` prints it, and the
//! entries a restore of some of its tables needs: the tables, their data and
//! everything attached to them (defaults, constraints, indexes, triggers, policies,
//! comments, grants, owned sequences and their values), and everything those need in
//! turn (schemas, types, functions, sequences, extensions) unless the target already
//! has it. What would need another table is left out, and said.
//!
//! Names come from pg_restore's listing, which prints identifiers unquoted: a table is
//! recognised only by the schema and name its fingerprint recorded, and an ambiguous
//! line is refused rather than guessed.

mod listing;
mod pattern;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub use listing::unquote_qualified;
use listing::{bad_listing, parse_line};
pub use pattern::{SchemaPattern, TablePattern};

use crate::error::{Error, Result};

/// Which tables a partial restore takes: those matching any `tables` or `schemas`
/// pattern (every table when both are empty), minus those matching `exclude`.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `--table` patterns.
    pub tables: Vec<TablePattern>,
    /// `--schema` patterns.
    pub schemas: Vec<SchemaPattern>,
    /// `--exclude-table` patterns.
    pub exclude: Vec<TablePattern>,
}

impl Filter {
    /// Whether it selects anything less than everything.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.schemas.is_empty() && self.exclude.is_empty()
    }

    /// Whether the table `schema`.`name` is selected.
    pub fn selects(&self, schema: &str, name: &str) -> bool {
        let included = (self.tables.is_empty() && self.schemas.is_empty())
            || self.tables.iter().any(|p| p.matches(schema, name))
            || self.schemas.iter().any(|p| p.matches(schema));
        included && !self.exclude.iter().any(|p| p.matches(schema, name))
    }

    /// The patterns, for messages.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(
            self.tables
                .iter()
                .map(|p| format!("--table {}", p.as_str())),
        );
        parts.extend(
            self.schemas
                .iter()
                .map(|p| format!("--schema {}", p.as_str())),
        );
        parts.extend(
            self.exclude
                .iter()
                .map(|p| format!("--exclude-table {}", p.as_str())),
        );
        parts.join(" ")
    }
}

/// One entry of the listing.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its dump id, which `pg_restore --use-list` selects by.
    pub id: u32,
    /// Its kind (`TABLE`, `TABLE DATA`, `FK CONSTRAINT`, …).
    pub desc: &'static str,
    /// What follows the kind: schema (`-` for none), tag and owner, unquoted.
    pub rest: String,
    /// The dump ids it depends on.
    pub deps: Vec<u32>,
}

impl Entry {
    /// `TYPE app mood postgres`: the line without its ids.
    pub fn describe(&self) -> String {
        format!("{} {}", self.desc, self.rest)
    }

    fn is_relation(&self) -> bool {
        matches!(
            self.desc,
            "TABLE" | "VIEW" | "MATERIALIZED VIEW" | "FOREIGN TABLE"
        )
    }

    /// Whether it names the object `schema`.`name` (or is attached to it: a
    /// constraint's tag begins with its table's name).
    fn is_about(&self, schema: &str, name: &str) -> bool {
        self.rest.starts_with(&format!("{schema} {name} "))
    }

    /// The schema and the tag, split at spaces: what the target is asked about.
    /// Names holding spaces may split wrong; the target then seems to lack the
    /// object, the restore tries to create it and fails whole.
    pub fn schema_and_tag(&self) -> (Option<&str>, &str) {
        let (schema, rest) = self.rest.split_once(' ').unwrap_or(("-", ""));
        let tag = rest.rsplit_once(' ').map_or(rest, |(tag, _owner)| tag);
        ((schema != "-").then_some(schema), tag)
    }
}

/// Kinds that are part of the object they depend on rather than something other
/// objects need: they come with a selected table (or with what it needs).
const ATTACHED: &[&str] = &[
    "TABLE DATA",
    "DEFAULT",
    "CONSTRAINT",
    "CHECK CONSTRAINT",
    "FK CONSTRAINT",
    "INDEX",
    "INDEX ATTACH",
    "TABLE ATTACH",
    "TRIGGER",
    "RULE",
    "POLICY",
    "ROW SECURITY",
    "COMMENT",
    "ACL",
    "SECURITY LABEL",
    "SEQUENCE",
    "SEQUENCE OWNED BY",
    "SEQUENCE SET",
    "STATISTICS",
    "STATISTICS DATA",
];

/// Kinds a target database may already have, which a partial restore then uses as
/// they are.
pub const SHARED: &[&str] = &[
    "TABLE",
    "SCHEMA",
    "EXTENSION",
    "TYPE",
    "DOMAIN",
    "FUNCTION",
    "PROCEDURE",
    "AGGREGATE",
    "SEQUENCE",
    "COLLATION",
];

/// A parsed listing.
#[derive(Clone, Debug, Default)]
pub struct Toc {
    entries: Vec<Entry>,
    index: HashMap<u32, usize>,
}

/// A table the restore takes, with the fingerprint key it is proven under.
#[derive(Clone, Debug)]
pub struct SelectedTable {
    /// Its dump id.
    pub id: u32,
    /// `schema.table` as the fingerprint names it (quoted where needed); `None` for
    /// one the fingerprint covers through its parent (a partition).
    pub key: Option<String>,
}

/// What a partial restore restores.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Every entry restored.
    pub included: BTreeSet<u32>,
    /// The tables selected (with their partitions and inheritance children).
    pub tables: Vec<SelectedTable>,
    /// The fingerprint keys of the sequences it creates.
    pub sequences: Vec<String>,
    /// What it creates beyond the tables and what is attached to them.
    pub created: Vec<String>,
    /// What the target already had and the restore uses as it is.
    pub present: Vec<String>,
    /// Entries of the selected tables left out, each with the reason.
    pub left_out: Vec<(String, String)>,
}

impl Toc {
    /// Parses the output of `pg_restore --list --verbose`.
    pub fn parse(listing: &str) -> Result<Self> {
        let mut toc = Toc::default();
        let mut saw_deps = false;
        for line in listing.lines() {
            if let Some(deps) = line.strip_prefix(";\tdepends on:") {
                let Some(last) = toc.entries.last_mut() else {
                    return Err(bad_listing(line));
                };
                for dep in deps.split_whitespace() {
                    last.deps.push(dep.parse().map_err(|_| bad_listing(line))?);
                }
                saw_deps = true;
                continue;
            }
            if line.starts_with(';') || line.trim().is_empty() {
                continue;
            }
            let entry = parse_line(line).ok_or_else(|| bad_listing(line))?;
            toc.index.insert(entry.id, toc.entries.len());
            toc.entries.push(entry);
        }
        if !saw_deps && toc.entries.iter().any(|e| e.desc == "TABLE DATA") {
            return Err(Error::tool(
                "pg_restore --list --verbose printed no dependencies; a partial restore needs pg_restore 12 or newer",
            ));
        }
        Ok(toc)
    }

    /// Its entries, in archive order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry with dump id `id`.
    pub fn get(&self, id: u32) -> Option<&Entry> {
        self.index.get(&id).map(|&i| &self.entries[i])
    }

    /// The tables `filter` selects, found by the names the backup's fingerprint
    /// recorded (`tables`: fingerprint key → schema and name, unquoted), with their
    /// partitions and inheritance children.
    pub fn tables(
        &self,
        tables: &BTreeMap<String, (String, String)>,
        filter: &Filter,
    ) -> Result<Vec<SelectedTable>> {
        let mut selected = Vec::new();
        for entry in self.entries.iter().filter(|e| e.desc == "TABLE") {
            let known: Vec<(&String, &(String, String))> = tables
                .iter()
                .filter(|(_, (schema, name))| entry.is_about(schema, name))
                .collect();
            // An ambiguous line between tables nobody asked for stops nothing.
            if !known
                .iter()
                .any(|(_, (schema, name))| filter.selects(schema, name))
            {
                continue;
            }
            match known.as_slice() {
                [] => {}
                [(key, _)] => selected.push(SelectedTable {
                    id: entry.id,
                    key: Some((*key).clone()),
                }),
                many => {
                    return Err(Error::config(format!(
                        "the backup's table of contents line \"{}\" may name any of {}; pgproof cannot tell which, so it does not restore them in part",
                        entry.describe(),
                        many.iter()
                            .map(|(k, _)| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        // Partitions and inheritance children come with their parents; a child the
        // fingerprint names as a table of its own (an inheritance child, a table of
        // a selected one's row type) can be left out with --exclude-table. A
        // partition cannot: its rows are in its parent's fingerprint.
        let mut ids: HashSet<u32> = selected.iter().map(|t| t.id).collect();
        let mut excluded: HashSet<u32> = HashSet::new();
        loop {
            let children: Vec<&Entry> = self
                .entries
                .iter()
                .filter(|e| e.desc == "TABLE" && !ids.contains(&e.id) && !excluded.contains(&e.id))
                .filter(|e| e.deps.iter().any(|d| ids.contains(d)))
                .collect();
            if children.is_empty() {
                break;
            }
            for child in children {
                let named = tables
                    .iter()
                    .find(|(_, (schema, name))| child.is_about(schema, name));
                if let Some((_, (schema, name))) = named
                    && filter.exclude.iter().any(|p| p.matches(schema, name))
                {
                    excluded.insert(child.id);
                    continue;
                }
                ids.insert(child.id);
                selected.push(SelectedTable {
                    id: child.id,
                    key: named.map(|(key, _)| key.clone()),
                });
            }
        }
        Ok(selected)
    }

    /// The entries restoring `tables` takes, using what `present` names (entries the
    /// target already has) instead of creating it. `sequences` maps the fingerprint's
    /// sequence keys to their schema and name, to name the sequences created.
    pub fn select(
        &self,
        tables: Vec<SelectedTable>,
        present: &HashSet<u32>,
        sequences: &BTreeMap<String, (String, String)>,
    ) -> Result<Selection> {
        let seeds: HashSet<u32> = tables.iter().map(|t| t.id).collect();
        // The tables a selected one inherits from come as definitions (no rows): a
        // child cannot be created without its parents.
        let mut relations = seeds.clone();
        relations.extend(self.parents(&tables).iter().map(|e| e.id));
        let mut included = BTreeSet::new();
        for table in &tables {
            if let Err(missing) = self.close(table.id, &relations, present, &mut included) {
                return Err(Error::config(format!(
                    "{} needs {}, which the selection leaves out: add it with --table",
                    self.name(table.id),
                    self.name(missing)
                )));
            }
        }
        let mut left_out = BTreeMap::new();
        loop {
            let mut changed = false;
            for entry in &self.entries {
                if included.contains(&entry.id)
                    || present.contains(&entry.id)
                    || !ATTACHED.contains(&entry.desc)
                    || !entry.deps.iter().any(|d| included.contains(d))
                    // A table's data, or its sequence, only with the table: a schema
                    // created for one table does not bring the others' sequences.
                    || matches!(entry.desc, "TABLE DATA" | "SEQUENCE")
                        && !entry.deps.iter().any(|d| seeds.contains(d))
                {
                    continue;
                }
                if entry.desc == "SEQUENCE OWNED BY" && !self.owner_selected(entry, &seeds) {
                    continue;
                }
                match self.close(entry.id, &relations, present, &mut included) {
                    Ok(()) => changed = true,
                    Err(missing) => {
                        if tables.iter().any(|t| self.is_about_table(entry, t.id)) {
                            left_out.insert(
                                entry.id,
                                format!("it needs {}: add it with --table", self.name(missing)),
                            );
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let described = |filter: &dyn Fn(&Entry) -> bool, set: &dyn Fn(u32) -> bool| {
            self.entries
                .iter()
                .filter(|e| set(e.id) && filter(e))
                .map(Entry::describe)
                .collect::<Vec<_>>()
        };
        let created = described(
            &|e| !ATTACHED.contains(&e.desc) && !seeds.contains(&e.id),
            &|id| included.contains(&id),
        );
        let present_used = described(&|_| true, &|id| present.contains(&id));
        let created_sequences = sequences
            .iter()
            .filter(|(_, (schema, name))| {
                self.entries.iter().any(|e| {
                    e.desc == "SEQUENCE" && included.contains(&e.id) && e.is_about(schema, name)
                })
            })
            .map(|(key, _)| key.clone())
            .collect();
        Ok(Selection {
            left_out: left_out
                .into_iter()
                .filter_map(|(id, why)| self.get(id).map(|e| (e.describe(), why)))
                .collect(),
            included,
            tables,
            sequences: created_sequences,
            created,
            present: present_used,
        })
    }

    /// The tables `tables` inherit from or are partitions of (and theirs), which are
    /// not selected themselves.
    pub fn parents(&self, tables: &[SelectedTable]) -> Vec<&Entry> {
        let seeds: HashSet<u32> = tables.iter().map(|t| t.id).collect();
        let mut found: BTreeSet<u32> = BTreeSet::new();
        let mut stack: Vec<u32> = seeds.iter().copied().collect();
        while let Some(id) = stack.pop() {
            for &dep in self.get(id).map(|e| e.deps.as_slice()).unwrap_or_default() {
                if self.get(dep).is_some_and(|e| e.desc == "TABLE")
                    && !seeds.contains(&dep)
                    && found.insert(dep)
                {
                    stack.push(dep);
                }
            }
        }
        found.iter().filter_map(|id| self.get(*id)).collect()
    }

    /// The shared objects (kinds in [`SHARED`]) restoring `tables` would create if
    /// the target had none: what to ask the target about.
    pub fn shared_needs(&self, tables: &[SelectedTable]) -> Result<Vec<&Entry>> {
        let all = self.select(tables.to_vec(), &HashSet::new(), &BTreeMap::new())?;
        let seeds: HashSet<u32> = tables.iter().map(|t| t.id).collect();
        Ok(self
            .entries
            .iter()
            .filter(|e| {
                all.included.contains(&e.id) && !seeds.contains(&e.id) && SHARED.contains(&e.desc)
            })
            .collect())
    }

    /// The listing `pg_restore --use-list` restores exactly `selection` from, in the
    /// archive's order (a custom archive read from a pipe cannot go back).
    pub fn use_list(&self, selection: &Selection) -> String {
        self.entries
            .iter()
            .filter(|e| selection.included.contains(&e.id))
            .map(|e| format!("{}; {}\n", e.id, e.describe()))
            .collect()
    }

    /// Adds `start` and everything it needs to `included`, or nothing when that
    /// includes a table, view or foreign table that is not selected (returned).
    fn close(
        &self,
        start: u32,
        seeds: &HashSet<u32>,
        present: &HashSet<u32>,
        included: &mut BTreeSet<u32>,
    ) -> std::result::Result<(), u32> {
        let mut added = HashSet::new();
        let mut stack = vec![start];
        while let Some(id) = stack.pop() {
            if included.contains(&id) || present.contains(&id) || !added.insert(id) {
                continue;
            }
            let Some(entry) = self.get(id) else {
                // An object the archive does not hold (a database's own entry).
                added.remove(&id);
                continue;
            };
            if entry.is_relation() && !seeds.contains(&id) {
                return Err(id);
            }
            for &dep in &entry.deps {
                // A sequence depends on the table owning it only for OWNED BY, which
                // is an entry of its own: the sequence itself can be made alone.
                if entry.desc == "SEQUENCE"
                    && self.get(dep).is_some_and(Entry::is_relation)
                    && !seeds.contains(&dep)
                {
                    continue;
                }
                stack.push(dep);
            }
        }
        included.extend(added);
        Ok(())
    }

    /// Whether the tables owning `owned_by`'s sequence are all selected.
    fn owner_selected(&self, owned_by: &Entry, seeds: &HashSet<u32>) -> bool {
        owned_by
            .deps
            .iter()
            .filter_map(|d| self.get(*d))
            .all(|seq| {
                seq.deps
                    .iter()
                    .filter(|d| self.get(**d).is_some_and(Entry::is_relation))
                    .all(|d| seeds.contains(d))
            })
    }

    /// Whether `entry` is one of table `table`'s own (its tag begins with the table's).
    fn is_about_table(&self, entry: &Entry, table: u32) -> bool {
        let Some(table) = self.get(table) else {
            return false;
        };
        let (Some(schema), name) = table.schema_and_tag() else {
            return false;
        };
        entry.is_about(schema, name)
    }

    fn name(&self, id: u32) -> String {
        self.get(id)
            .map_or_else(|| format!("entry {id}"), Entry::describe)
    }
}

#[cfg(test)]
mod tests;
