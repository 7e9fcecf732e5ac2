//! Generated hostile request targets: a start the caller may reach (a
//! public prefix, its own project, an API endpoint), a way out of it (dot
//! segments in every spelling an upstream might resolve), and a goal it may
//! not reach (another project, a sibling, a parent, `/v1/admin`), spelled
//! with encodings, path parameters, case variants, Unicode look-alikes,
//! odd separators and many segments, plus a query with `context` and
//! `_method` variants.
//!
//! Everything is drawn from a small seeded PRNG, so a failing run is
//! reproduced exactly by its seed.

/// SplitMix64: tiny, fast, and good enough to pick fragments.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % n as u64).unwrap()
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// One generated request.
#[derive(Clone, Debug)]
pub struct Case {
    pub method: &'static str,
    /// The request target exactly as sent.
    pub target: String,
    /// Sent with the caller's token (otherwise anonymous).
    pub token: bool,
}

/// Where a path starts: somewhere the caller may be.
const STARTS: &[&[&str]] = &[
    &["v1", "contexts", "projects", "public"],
    &["v1", "contexts", "projects", "public", "notes"],
    &["v1", "contexts", "projects", "public", "drafts"],
    &[".well-known"],
    &[".well-known", "jwks.json"],
    &["health", "context"],
    &["v1", "query"],
    &["v1", "graph", "traverse"],
    &[],
];

/// Where it tries to go. Mostly forbidden; some allowed, so that the run
/// also proves what is forwarded is what was authorised.
const GOALS: &[&[&str]] = &[
    &["v1", "contexts", "projects", "secret"],
    &["v1", "contexts", "projects", "secret", "plans"],
    &["projects", "secret"],
    &["secret"],
    &["v1", "admin"],
    &["admin"],
    &["v1", "contexts", "projects", "publicity"],
    &["public2"],
    &["v1", "contexts", "projects"],
    &["v1", "contexts"],
    &["v1", "contexts", "projects", "public", "drafts", "post"],
    &["v1", "contexts", "projects", "public", "kiosk"],
    &["drafts", "post"],
    &["notes"],
    &["v1", "query"],
    &["v1", "graph", "traverse"],
    &["health", "context"],
    &[".well-known", "openid-configuration"],
    &[],
];

/// Ways up one level, as different readers understand them.
const CLIMBS: &[&str] = &[
    "..",
    "..",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%2e.",
    "..;",
    "..;jsessionid=x",
    "..%3b",
    "..%3B",
    "\u{FF0E}\u{FF0E}",
    "%EF%BC%8E%EF%BC%8E",
    "%c0%ae%c0%ae",
    "%252e%252e",
    "..%00",
    "\u{2025}",
    "%E2%80%A5",
    "...",
];

/// Ways to stay in place.
const DOTS: &[&str] = &[".", "%2e", "%2E", ".;", "%2e%3b", "\u{FF0E}", "%EF%BC%8E"];

/// What may stand instead of a `/` between two segments.
const SEPARATORS: &[&str] = &[
    "//",
    "///",
    "%2f",
    "%2F",
    "%252f",
    "\\",
    "%5c",
    "%5C",
    "/./",
    "/%2e/",
    "/;/",
    "\u{FF0F}",
    "%EF%BC%8F",
    "%c0%af",
];

/// What may stand instead of the leading `/`.
const LEADING: &[&str] = &["//", "/./", "/%2e/", "/;/", "\\", "%2F"];

/// What may follow the last segment.
const TRAILING: &[&str] = &["/", "//", "/.", "/..", "%2F", "/%2e", "/;"];

/// Appended to a segment.
const DECORATIONS: &[&str] = &[
    ";",
    ";jsessionid=x",
    "%3b",
    "%3B",
    ";x=1",
    "%00",
    "%25",
    "%2541",
    "+",
    "%20",
    "%3F",
    "%23",
    "?",
    "#",
    "~",
];

/// Replacements for one ASCII letter: raw and UTF-8 percent-encoded
/// compatibility characters and case-mapping surprises.
const LOOK_ALIKES: &[(char, &str)] = &[
    ('s', "\u{017F}"),
    ('s', "%C5%BF"),
    ('k', "\u{212A}"),
    ('k', "%E2%84%AA"),
    ('i', "\u{0130}"),
    ('i', "%C4%B0"),
    ('e', "%c0%e5"),
    ('c', "%63"),
    ('c', "%43"),
    ('p', "%70"),
];

/// Query parameters: the context the gateway authorises, spelled so an
/// upstream might read another, and method overrides.
const QUERY_PAIRS: &[&str] = &[
    "context=projects/public",
    "context=projects/public/notes",
    "context=projects/public",
    "context=projects/secret",
    "context=projects/public/../secret",
    "context=projects%2Fpublic%2F..%2Fsecret",
    "context=projects/public%2F..%2F..%2Fsecret",
    "context=projects%252Fsecret",
    "context=projects/public%2523",
    "context=..%2Fsecret",
    "context=PROJECTS/PUBLIC",
    "context=projects/public+x",
    "context=projects/public%3Bx",
    "Context=projects/secret",
    "CONTEXT=projects/public",
    "%63ontext=projects/secret",
    "c%6Fntext=projects/public",
    "%43ONTEXT=projects/secret",
    "context",
    "_method=DELETE",
    "_method=GET",
    "_method=post",
    "%5Fmethod=PUT",
    "_METHOD=DELETE",
    "x=1",
    "x=%25",
    "q=a+b",
    "limit=5",
];

const QUERY_SEPARATORS: &[&str] = &["&", "&", "&", ";", "&&"];

/// No HEAD: the echo upstream's answer to it has no body, so what the
/// upstream received could not be checked.
const METHODS: &[&str] = &["GET", "GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE"];

/// How many tricks a case plays: many cases play one or two, so that
/// each trick is also seen alone, next to requests that are fine.
const TRICKS: &[usize] = &[0, 1, 1, 1, 2, 2, 3, 4];

/// `count` cases drawn from `seed`.
pub fn generate(seed: u64, count: usize) -> Vec<Case> {
    let mut rng = Rng::new(seed);
    (0..count).map(|_| case(&mut rng)).collect()
}

/// A path being built: `separators[i]` comes before `segments[i]`.
struct Path {
    separators: Vec<&'static str>,
    segments: Vec<String>,
    trailing: &'static str,
}

fn case(rng: &mut Rng) -> Case {
    let start = rng.pick(STARTS);
    let goal = rng.pick(GOALS);
    let climbs = if rng.chance(30) {
        0
    } else {
        rng.below(start.len() + 2)
    };
    let segments: Vec<String> = start
        .iter()
        .copied()
        .chain(std::iter::repeat_n("..", climbs))
        .chain(goal.iter().copied())
        .map(str::to_owned)
        .collect();
    let mut path = Path {
        separators: vec!["/"; segments.len()],
        segments,
        trailing: "",
    };
    for _ in 0..rng.pick(TRICKS) {
        trick(rng, &mut path);
    }

    let mut target = String::new();
    for (separator, segment) in path.separators.iter().zip(&path.segments) {
        target.push_str(separator);
        target.push_str(segment);
    }
    if target.is_empty() {
        target.push('/');
    }
    target.push_str(path.trailing);

    let endpoint = |path: &[&str]| path.ends_with(&["query"]) || path.ends_with(&["traverse"]);
    let queried = endpoint(start) || endpoint(goal);
    if queried || rng.chance(25) {
        target.push('?');
        for i in 0..rng.pick(&[1, 1, 1, 2, 3]) {
            if i > 0 {
                target.push_str(rng.pick(QUERY_SEPARATORS));
            }
            target.push_str(rng.pick(QUERY_PAIRS));
        }
    }
    if rng.chance(2) {
        target.push_str("#frag");
    }

    let method = if queried && rng.chance(75) {
        "POST"
    } else {
        rng.pick(METHODS)
    };
    Case {
        method,
        target,
        token: rng.chance(75),
    }
}

/// One trick played on the path.
fn trick(rng: &mut Rng, path: &mut Path) {
    let len = path.segments.len();
    let at = rng.below(len + 1);
    let insert = |path: &mut Path, at: usize, segment: &str| {
        path.segments.insert(at, segment.to_owned());
        path.separators.insert(at, "/");
    };
    match rng.below(11) {
        // Another spelling of a climb, or a detour through one.
        0 | 1 => match path.segments.iter().position(|s| s == "..") {
            Some(i) if rng.chance(70) => path.segments[i] = rng.pick(CLIMBS).to_owned(),
            _ => {
                insert(path, at, rng.pick(CLIMBS));
                insert(path, at, "x");
            }
        },
        2 => insert(path, at, rng.pick(DOTS)),
        // Many segments, sometimes climbed back out of: near and past the
        // filter's depth limit.
        10 => {
            let depth = 1 + rng.below(80);
            if rng.chance(50) {
                for _ in 0..depth {
                    insert(path, at, "..");
                }
            }
            for _ in 0..depth {
                insert(path, at, "d");
            }
        }
        4 => path.trailing = rng.pick(TRAILING),
        _ if len == 0 => insert(path, 0, "projects"),
        3 => match at.min(len - 1) {
            0 => path.separators[0] = rng.pick(LEADING),
            i => path.separators[i] = rng.pick(SEPARATORS),
        },
        trick => {
            let i = at.min(len - 1);
            let segment = &path.segments[i];
            path.segments[i] = match trick {
                5 => format!("{segment}{}", rng.pick(DECORATIONS)),
                6 | 7 => recase(rng, segment),
                8 => {
                    let (letter, replacement) = rng.pick(LOOK_ALIKES);
                    segment.replacen(letter, replacement, 1)
                }
                _ => encode_one(rng, segment),
            };
        }
    }
}

/// `Projects`, `SECRET`, `cOnTeXtS`, ...
fn recase(rng: &mut Rng, segment: &str) -> String {
    match rng.below(3) {
        0 => segment.to_ascii_uppercase(),
        1 => {
            let mut chars = segment.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        }
        _ => segment
            .chars()
            .map(|c| {
                if rng.chance(50) {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect(),
    }
}

/// Percent-encodes one ASCII character (hex case at random), sometimes
/// twice (`%2541`).
fn encode_one(rng: &mut Rng, segment: &str) -> String {
    let positions: Vec<usize> = segment
        .char_indices()
        .filter(|(_, c)| c.is_ascii_alphanumeric() || *c == '.')
        .map(|(i, _)| i)
        .collect();
    if positions.is_empty() {
        return segment.to_owned();
    }
    let i = rng.pick(&positions);
    let byte = segment.as_bytes()[i];
    let hex = if rng.chance(50) {
        format!("{byte:02x}")
    } else {
        format!("{byte:02X}")
    };
    let escape = if rng.chance(20) {
        format!("%25{hex}")
    } else {
        format!("%{hex}")
    };
    format!("{}{escape}{}", &segment[..i], &segment[i + 1..])
}
