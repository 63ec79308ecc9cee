//! A config with many `[[static_route]]` tables parses in pieces, on every CPU: the toml
//! crate holds each token and parser event of what it reads at once, about 20 bytes of
//! memory per byte of text (1M routes, 83 MB: 1.8 GB at the peak and 2.2 s on one CPU).
//!
//! The file is lexed once with the toml crate's own lexer (strings, comments and nested
//! values are single tokens or tracked, so a line inside them is never taken for a table
//! header) and cut at its table headers. Tables other than `[[static_route]]` stay together,
//! in order, as one document; the route tables, in order, make pieces of [`PIECE`] tables
//! each. A route table cannot refer to another table, so each piece means alone what it
//! means in the file.
//!
//! Whatever this path does not expect makes it step aside: a header or top-level key that
//! names `static_route` in any other form (`[static_route.x]`, a quoted key), fewer routes
//! than two pieces, any piece that does not parse. The whole file is then parsed in one go,
//! as before, and its errors are the ones reported, with their lines.

use serde::Deserialize;
use toml_parser::{Source, lexer::TokenKind};

use super::{Config, StaticRoute};

/// Route tables in one piece.
pub(super) const PIECE: usize = 16_384;

/// `text` parsed in pieces, or None when it has to be parsed in one go (see the module).
/// Pieces are parsed on worker threads as the lexer finds them, while it goes on.
pub(super) fn parse(text: &str, piece: usize) -> Option<Config> {
    // A quick count decides whether to start at all; the lexer has the last word.
    if piece == 0 || text.matches("[[static_route]]").count() < 2 * piece {
        return None;
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 8);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, &str)>();
    let rx = std::sync::Mutex::new(rx);
    let (main, routes) = std::thread::scope(|scope| {
        let rx = &rx;
        // A thread that cannot start leaves the file to be parsed in one go.
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                std::thread::Builder::new()
                    .name("config".into())
                    .spawn_scoped(scope, move || {
                        let mut done: Vec<Numbered> = Vec::new();
                        loop {
                            let job = rx.lock().ok()?.recv();
                            let Ok((i, p)) = job else {
                                return Some(done);
                            };
                            done.push((i, toml::from_str::<Routes>(p).ok()?.routes));
                        }
                    })
                    .ok()
            })
            .collect();
        let mut next = 0;
        let main = cut(text, piece, |p| {
            // Workers that gave up leave the rest unread; the result is None then anyway.
            tx.send((next, p)).ok();
            next += 1;
        });
        drop(tx);
        let main = main.and_then(|m| toml::from_str::<Config>(&m).ok());
        let routes: Option<Vec<Vec<Numbered>>> = handles
            .into_iter()
            .map(|h| h?.join().ok().flatten())
            .collect();
        (main, routes)
    });
    let mut config = main?;
    if !config.static_routes.is_empty() {
        return None;
    }
    let mut pieces: Vec<Numbered> = routes?.into_iter().flatten().collect();
    pieces.sort_unstable_by_key(|(i, _)| *i);
    config.static_routes = Vec::with_capacity(pieces.iter().map(|(_, r)| r.len()).sum());
    for (_, routes) in pieces {
        config.static_routes.extend(routes);
    }
    Some(config)
}

/// A piece's routes, with the piece's place in the file.
type Numbered = (usize, Vec<StaticRoute>);

/// A piece of route tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Routes {
    #[serde(rename = "static_route")]
    routes: Vec<StaticRoute>,
}

/// The segments of a file as its headers arrive: the top (before any header), then each
/// header to the next. Route segments go out in pieces of `piece`, the others into `main`.
struct Cutter<'a, F: FnMut(&'a str)> {
    text: &'a str,
    piece: usize,
    main: String,
    /// The segment being read: its start and whether it is a route table.
    segment: (usize, bool),
    /// The start of the piece being gathered, and its route tables so far.
    piece_start: Option<usize>,
    in_piece: usize,
    emit: F,
}

impl<'a, F: FnMut(&'a str)> Cutter<'a, F> {
    /// A header at `start`: the segment before it ends there.
    fn header(&mut self, start: usize, route: bool) -> Option<()> {
        self.close(start, route)?;
        self.segment = (start, route);
        Some(())
    }

    fn close(&mut self, end: usize, next_is_route: bool) -> Option<()> {
        let (start, route) = self.segment;
        if route {
            let from = *self.piece_start.get_or_insert(start);
            self.in_piece += 1;
            if self.in_piece == self.piece || !next_is_route {
                (self.emit)(self.text.get(from..end)?);
                self.piece_start = None;
                self.in_piece = 0;
            }
        } else {
            self.main.push_str(self.text.get(start..end)?);
        }
        Some(())
    }
}

/// Cuts `text` at its table headers: each piece of route tables goes to `emit` as soon as it
/// is complete; the rest, in order, is returned. None: the file is not one to cut (see
/// [`headers`]).
fn cut<'a>(text: &'a str, piece: usize, emit: impl FnMut(&'a str)) -> Option<String> {
    let mut cutter = Cutter {
        text,
        piece: piece.max(1),
        main: String::new(),
        segment: (0, false),
        piece_start: None,
        in_piece: 0,
        emit,
    };
    headers(text, |start, route| cutter.header(start, route))?;
    cutter.close(text.len(), false)?;
    Some(cutter.main)
}

/// Finds the table headers of `text` in order and hands each to `found` (where its line
/// starts, and whether it is exactly `[[static_route]]`); None when one of them, or a key
/// before the first, names `static_route` in another way.
fn headers(text: &str, mut found: impl FnMut(usize, bool) -> Option<()>) -> Option<()> {
    let mut any = false;
    let mut tokens = Source::new(text).lex();
    // Open `[` and `{` of values: a line inside a value is never a header.
    let mut depth = 0usize;
    let mut line_start = true;
    while let Some(token) = tokens.next() {
        let kind = token.kind();
        match kind {
            TokenKind::Newline => {
                line_start = true;
                continue;
            }
            TokenKind::Whitespace | TokenKind::Comment => continue,
            TokenKind::Eof => break,
            _ => {}
        }
        let first = std::mem::replace(&mut line_start, false) && depth == 0;
        let raw = text.get(token.span().start()..token.span().end())?;
        if first && kind == TokenKind::LeftSquareBracket {
            // The header's tokens up to the end of its line.
            let mut parts = vec![(kind, raw)];
            for t in tokens.by_ref() {
                match t.kind() {
                    TokenKind::Newline => {
                        line_start = true;
                        break;
                    }
                    TokenKind::Eof => break,
                    TokenKind::Whitespace | TokenKind::Comment => {}
                    k => parts.push((k, text.get(t.span().start()..t.span().end())?)),
                }
            }
            use TokenKind::{Atom, LeftSquareBracket as L, RightSquareBracket as R};
            let route = matches!(
                parts.as_slice(),
                [(L, _), (L, _), (Atom, "static_route"), (R, _), (R, _)]
            );
            if !route && parts.iter().any(|(k, raw)| names_routes(*k, raw)) {
                return None;
            }
            any = true;
            found(token.span().start(), route)?;
            continue;
        }
        if first && !any && names_routes(kind, raw) {
            return None;
        }
        match kind {
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
    }
    Some(())
}

/// A key part that may name the route tables: `static_route` itself, or any quoted key
/// (which could spell it with escapes).
fn names_routes(kind: TokenKind, raw: &str) -> bool {
    match kind {
        TokenKind::Atom => raw.contains("static_route"),
        TokenKind::BasicString
        | TokenKind::LiteralString
        | TokenKind::MlBasicString
        | TokenKind::MlLiteralString => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = r#"[agent]
local_asn = 64512

[underlay]
interface = "ul0"
local_vtep = "172.31.0.1"

[[border_gateway]]
name = "bgw-1"
"#;

    fn route(i: u32) -> String {
        format!(
            "\n[[static_route]]\nborder_gateway = \"bgw-1\"\nprefix = \"{}/32\"\nvia = \"att-a\"\n",
            std::net::Ipv4Addr::from(0x0b00_0000 + i)
        )
    }

    fn routes(from: u32, n: u32) -> String {
        (from..from + n).map(route).collect()
    }

    /// The cut of `text`: what is left, and the pieces.
    fn cut_all(text: &str, piece: usize) -> Option<(String, Vec<&str>)> {
        let mut pieces = Vec::new();
        let main = cut(text, piece, |p| pieces.push(p))?;
        Some((main, pieces))
    }

    fn whole(text: &str) -> Config {
        toml::from_str(text).expect("the file parses in one go")
    }

    #[test]
    fn pieces_make_what_the_whole_file_makes() {
        // Routes before, between and after other tables; 10 routes in pieces of 3.
        let text = format!(
            "{TOP}{}\n[[vpc_attachment]]\nname = \"att-a\"\nborder_gateway = \"bgw-1\"\nvni = 1\nremote_vtep = \"172.31.0.2\"\nrouter_mac = \"02:00:00:00:0a:01\"\npropagate = [\n  \"10.0.0.0/16\",\n]\n{}",
            routes(0, 4),
            routes(4, 6)
        );
        let (main, pieces) = cut_all(&text, 3).expect("cut");
        assert_eq!(pieces.len(), 4, "4 routes: 3 + 1, then 6: 3 + 3");
        assert!(!main.contains("static_route"));
        let config = parse(&text, 3).expect("parsed in pieces");
        assert_eq!(config.static_routes.len(), 10);
        assert_eq!(config, whole(&text));
    }

    #[test]
    fn few_routes_parse_in_one_go() {
        let text = format!("{TOP}{}", routes(0, 5));
        assert!(parse(&text, 3).is_none());
        assert!(parse(&text, 2).is_some());
    }

    #[test]
    fn a_header_inside_a_string_or_a_value_is_not_a_header() {
        // A multi-line string and an array of arrays with a line starting with `[`.
        let text = format!(
            "{TOP}description = \"\"\"\n[[static_route]]\n\"\"\"\nmatrix = [\n[1, 2],\n]\n{}",
            routes(0, 4)
        );
        let mut found = Vec::new();
        headers(&text, |start, route| {
            found.push((start, route));
            Some(())
        })
        .expect("headers");
        assert_eq!(found.iter().filter(|(_, route)| *route).count(), 4);
        assert_eq!(found.len(), 7);
    }

    #[test]
    fn other_spellings_of_the_route_tables_step_aside() {
        for odd in [
            "[static_route.extra]\nx = 1\n",
            "[[static_route.extra]]\nx = 1\n",
            "[[\"static_route\"]]\nborder_gateway = \"bgw-1\"\nprefix = \"12.0.0.0/8\"\nvia = \"att-a\"\n",
            "[ [ 'static_route' ] ]\n",
        ] {
            let text = format!("{TOP}{}\n{odd}{}", routes(0, 4), routes(4, 4));
            assert!(cut_all(&text, 2).is_none(), "{odd}");
        }
        let top_level = format!("static_route = []\n{TOP}{}", routes(0, 8));
        assert!(cut_all(&top_level, 2).is_none());
        let quoted = format!("\"static\\u005froute\" = []\n{TOP}{}", routes(0, 8));
        assert!(cut_all(&quoted, 2).is_none());
    }

    #[test]
    fn a_bad_piece_leaves_the_errors_to_the_whole_file() {
        let text = format!(
            "{TOP}{}\n[[static_route]]\nborder_gateway = \"bgw-1\"\nprefix = \"13.0.0.0/8\"\nvia = \"att-a\"\nvia = \"att-b\"\n{}",
            routes(0, 4),
            routes(4, 4)
        );
        assert!(cut_all(&text, 2).is_some());
        assert!(parse(&text, 2).is_none());
        let unknown = format!("{TOP}{}\n[[static_route]]\nnext_hop = 1\n", routes(0, 8));
        assert!(parse(&unknown, 2).is_none());
    }
}
