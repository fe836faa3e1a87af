//! The docs of the keys, from the table: the list `hvagent check-config --keys` prints, and the header of
//! each key's entry in hvagent.toml(5) (`make man-keys` writes them, and a test fails while the page's
//! keys are not the table's).

use super::keys::Place;
use super::setting::KeyDoc;
use super::SERVICES;

/// Every key, place by place, with what it takes, its default and what it does.
pub fn key_list() -> String {
    let mut list =
        String::from("Every key of hvagent.toml(5), with what it takes and its default.\n");
    for place in Place::all() {
        list.push('\n');
        list.push_str(&match place {
            Place::Top => "At the top level:\n".to_string(),
            Place::EveryService => {
                let sections: Vec<String> =
                    SERVICES.iter().map(|kind| format!("[{kind}]")).collect();
                format!("In each service's section ({}):\n", sections.join(", "))
            }
            Place::Service(kind) => format!("In [{kind}]:\n"),
        });
        for key in place.docs() {
            let default = key.default.map(|default| format!("; default {default}"));
            list.push_str(&format!(
                "  {:<16} {}{}\n  {:<16} {}\n",
                key.name,
                key.takes,
                default.unwrap_or_default(),
                "",
                key.doc
            ));
        }
    }
    list
}

/// The man page's section (`.SH`) that documents a place's keys.
fn heading(place: Place) -> String {
    match place {
        Place::Top => "TOP-LEVEL KEYS".to_string(),
        Place::EveryService => "SERVICE SECTIONS".to_string(),
        Place::Service(kind) => format!("{} KEYS", kind.name().to_uppercase()),
    }
}

/// A key's entry header: `.BR name " (what it takes; default D)"`.
fn header(key: &KeyDoc) -> String {
    let default = key
        .default
        .as_deref()
        .map(|default| format!("; default {default}"));
    let note = format!("{}{}", key.takes, default.unwrap_or_default());
    format!(".BR {} \" ({})\"", key.name, roff(&note))
}

/// Text as a roff macro argument shows it.
fn roff(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('"', "\\(dq")
}

/// `page` (hvagent.toml(5)) with the header of every key's entry written from the table. An entry is a
/// `.TP` or `.TQ` line followed by a `.B`/`.BR` line naming the key, under the heading of its place. Fails,
/// saying what differs, when the page documents a key the table does not have there or misses one.
pub fn refresh_man_page(page: &str) -> Result<String, String> {
    let places = Place::all();
    let mut place = None;
    let mut tagged = false;
    let mut documented: Vec<(Place, String)> = Vec::new();
    let mut wrong = Vec::new();
    let mut refreshed = String::with_capacity(page.len());
    for line in page.lines() {
        let mut out = line.to_string();
        if let Some(title) = line.strip_prefix(".SH ") {
            let title = title.trim().trim_matches('"');
            place = places
                .iter()
                .copied()
                .find(|&place| heading(place) == title);
        } else if let (true, Some(place)) = (tagged, place) {
            let name = line.split_whitespace().nth(1).unwrap_or("");
            match place.docs().into_iter().find(|key| key.name == name) {
                Some(key) => out = header(&key),
                None => wrong.push(format!(
                    "{}: '{line}' is no key of {}",
                    heading(place),
                    place.describe()
                )),
            }
            if documented
                .iter()
                .any(|(at, key)| *at == place && key == name)
            {
                wrong.push(format!("{}: {name} is documented twice", heading(place)));
            }
            documented.push((place, name.to_string()));
        }
        tagged = line == ".TP" || line == ".TQ";
        refreshed.push_str(&out);
        refreshed.push('\n');
    }
    for place in places {
        for name in place.names() {
            if !documented
                .iter()
                .any(|(at, key)| *at == place && key == name)
            {
                wrong.push(format!(
                    "{}: the key {name} of {} is not documented",
                    heading(place),
                    place.describe()
                ));
            }
        }
    }
    match wrong.is_empty() {
        true => Ok(refreshed),
        false => Err(wrong.join("\n")),
    }
}
