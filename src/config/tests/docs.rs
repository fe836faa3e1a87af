//! The table of keys and the docs it drives: `check-config --keys` and the key headers of hvagent.toml(5).

use std::path::Path;

use crate::config::docs::{key_list, refresh_man_page};
use crate::config::keys::{owner, Place};
use crate::config::Config;

/// The man page as the repository has it.
fn man_page() -> (std::path::PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/hvagent.toml.5");
    let page = std::fs::read_to_string(&path).unwrap();
    (path, page)
}

#[test]
fn every_key_is_written_in_one_place_only() {
    for place in Place::all() {
        for name in place.names() {
            assert_eq!(owner(name), Some(place), "{name}");
            let places: Vec<Place> = Place::all()
                .into_iter()
                .filter(|other| other.names().contains(&name))
                .collect();
            assert_eq!(places, [place], "{name} is a key of more than one place");
        }
    }
}

#[test]
fn every_key_has_a_default_unless_none_is_printed() {
    for place in Place::all() {
        for key in place.docs() {
            assert!(!key.doc.is_empty() && !key.takes.is_empty(), "{}", key.name);
            if key.default.is_none() {
                assert!(
                    ["listen", "health_command", "set_ip_command"].contains(&key.name),
                    "{} has no default in the docs: give it one with default_doc",
                    key.name
                );
            }
        }
    }
}

#[test]
fn the_printed_config_shows_every_key_with_a_default() {
    let printed = format!("\n{}", Config::default());
    for place in Place::all() {
        for key in place.docs().into_iter().filter(|key| key.default.is_some()) {
            let line = format!("\n{} = ", key.name);
            assert!(
                printed.contains(&line),
                "{} is not printed:\n{printed}",
                key.name
            );
        }
    }
}

#[test]
fn the_key_list_names_every_key_with_what_it_takes() {
    let list = key_list();
    for place in Place::all() {
        for key in place.docs() {
            assert!(
                list.contains(&format!("  {:<16} {}", key.name, key.takes)),
                "{list}"
            );
        }
    }
    assert!(
        list.contains(
            "probe_interval   0 (probes off) or a number of seconds from 0.05 to 3600; default 2"
        ),
        "{list}"
    );
    assert!(list.contains("In [shutdown]:"), "{list}");
}

/// Set HVAGENT_WRITE_MAN=1 (`make man-keys`) to write the refreshed page instead of comparing.
#[test]
fn the_man_page_documents_every_key_as_the_table_has_it() {
    let (path, page) = man_page();
    let refreshed =
        refresh_man_page(&page).unwrap_or_else(|why| panic!("{}: {why}", path.display()));
    if std::env::var_os("HVAGENT_WRITE_MAN").is_some() {
        std::fs::write(&path, &refreshed).unwrap();
    } else {
        assert!(
            refreshed == page,
            "{} has key headers the table does not: run `make man-keys`",
            path.display()
        );
    }
}

#[test]
fn a_man_page_that_misses_a_key_or_names_an_unknown_one_is_refused() {
    let (_, page) = man_page();
    let entry = page
        .lines()
        .position(|line| line.starts_with(".BR force_after "))
        .expect("the page documents force_after");
    let without: Vec<&str> = page
        .lines()
        .enumerate()
        .filter(|(at, _)| *at + 1 != entry && *at != entry)
        .map(|(_, line)| line)
        .collect();
    let why = refresh_man_page(&without.join("\n")).unwrap_err();
    assert!(why.contains("SHUTDOWN KEYS: the key force_after"), "{why}");
    let renamed = page.replace(".BR force_after ", ".BR force_later ");
    let why = refresh_man_page(&renamed).unwrap_err();
    assert!(why.contains("'.BR force_later"), "{why}");
    assert!(why.contains("is no key of the [shutdown] section"), "{why}");
    let moved = page.replace(".SH GUESTINFO KEYS", ".SH GUEST INFO KEYS");
    let why = refresh_man_page(&moved).unwrap_err();
    assert!(why.contains("GUESTINFO KEYS: the key state_dir"), "{why}");
}

#[test]
fn refreshed_headers_say_what_a_key_takes_and_its_default() {
    let (_, page) = man_page();
    let stale = page.replace(
        ".BR step_threshold \" (a number of seconds from 0.001 to 86400; default 1)\"",
        ".BR step_threshold \" (seconds, default 5)\"",
    );
    assert!(
        stale != page,
        "the page has step_threshold's header as the table writes it"
    );
    assert_eq!(refresh_man_page(&stale).unwrap(), page);
}

/// The README's example file under "## Configuration".
fn readme_config() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .expect("the section shows the file");
    block.split("```").next().unwrap().to_string()
}

#[test]
fn the_readme_shows_every_key_in_its_own_section() {
    let block = readme_config();
    for place in Place::all() {
        for name in place.names() {
            assert!(
                block.contains(&format!("{name} = ")),
                "README.md's config lacks {name}"
            );
        }
    }
    let mut section = None;
    for line in block.lines().map(|line| line.trim_start_matches('#')) {
        if let Some(name) = line.strip_prefix('[') {
            section = name.split(']').next().map(str::to_string);
        } else if let Some((name, _)) = line.split_once(" = ") {
            let place =
                owner(name).unwrap_or_else(|| panic!("README.md shows {name}, no key of the file"));
            let fits = match (place, section.as_deref()) {
                (Place::Top, None) => true,
                (Place::EveryService, Some(_)) => true,
                (Place::Service(kind), Some(written)) => kind.name() == written,
                _ => false,
            };
            assert!(
                fits,
                "README.md shows {name} in {section:?}, not in {}",
                place.describe()
            );
        }
    }
}
