//! Limits on the expanded shape of a GraphQL document, checked on the parsed document
//! before async-graphql validates or executes it.
//!
//! # Why
//!
//! async-graphql's validation visitors inline every fragment spread where it is used
//! (`VisitMode::Inline`), and execution does the same. A document whose fragments each
//! spread the next one twice (`fragment F0 on Query { ...F1 ...F1 }`, and so on) is a
//! few hundred bytes long but expands to 2^N selections: validating it alone keeps a
//! core busy for minutes. Depth and complexity limits do not help, because they are
//! themselves computed by such a visitor.
//!
//! # How
//!
//! [`check`] summarises every fragment definition once, in dependency order (a
//! fragment's spreads are summarised before the fragment), and a spread then costs
//! one lookup of the memoised summary. The whole check is therefore linear in the size
//! of the document, whatever the fan-out. The fragment graph is walked with an explicit
//! stack, so a chain of tens of thousands of fragments cannot overflow the Rust stack;
//! only selection-set nesting is walked recursively, and the parser bounds that. A
//! fragment that spreads itself, directly or through others, is refused
//! ([`Refusal::FragmentCycle`]); async-graphql would refuse it too, but only after
//! inlining.
//!
//! # What each count means
//!
//! All counts are taken after expanding every fragment spread at each place it is
//! used, and saturate at `u64::MAX` instead of overflowing.
//!
//! - `fields`: field selections (`__typename` included; fields of inline fragments
//!   too), summed over every operation of the document.
//! - `aliases`: field selections that have an alias, summed over every operation.
//! - `directives`: directive uses on fields, fragment spreads, inline fragments,
//!   operations and variable definitions, plus a fragment definition's own directives
//!   at each place it is spread; summed over every operation.
//! - `root_fields`: the most top-level fields of any one operation (fields reached
//!   through spreads or inline fragments at the top level are top-level fields).
//! - `depth`: the deepest field nesting of any operation, root fields at depth 1.
//!   Fragments and inline fragments add no level, and neither does a field named
//!   `ofType`: introspection spells a type's wrappers (`[Int!]!`) as an `ofType`
//!   chain, which GraphiQL's and graphql-js's standard introspection queries nest up
//!   to nine times, and those queries must pass.
//!
//! - `cost`: what the most expensive operation may ask of the node: each field costs 1
//!   plus its selection's cost, times the page size for a list field that pages (`first`
//!   or `last`, as given or from the variables, else [`CostModel::default_page`] for
//!   fields the schema pages). Reported to clients as `extensions.cost`.
//!
//! Every fragment definition, used or not (async-graphql's validation walks them all),
//! must itself be within the depth, fields, aliases and directives limits, its own
//! fields at depth 1. Spreads of unknown fragments count as nothing here;
//! async-graphql's validation reports them.

use std::collections::{HashMap, HashSet};

use async_graphql::{
    ErrorExtensionValues, Positioned, ServerError, Value, Variables,
    parser::types::{ExecutableDocument, Field, FragmentDefinition, Selection, SelectionSet},
};

#[derive(Debug, Clone, Copy)]
pub struct OperationLimits {
    pub max_depth: usize,
    pub max_fields: usize,
    pub max_aliases: usize,
    pub max_root_fields: usize,
    pub max_directives: usize,
    pub max_cost: usize,
}

/// Which fields multiply the cost of their selection: those the schema pages.
#[derive(Debug, Clone, Default)]
pub struct CostModel {
    /// Names of fields that take a `first` argument.
    pub paged_fields: HashSet<String>,
    /// The page size of a paged field queried without `first` or `last`.
    pub default_page: u64,
}

/// What [`check`] needs besides the document.
pub struct Context<'a> {
    pub limits: &'a OperationLimits,
    pub cost: &'a CostModel,
    pub variables: &'a Variables,
}

/// The expanded shape of a document (all counts saturating).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperationShape {
    pub depth: u64,
    pub fields: u64,
    pub aliases: u64,
    pub root_fields: u64,
    pub directives: u64,
    /// The cost of the most expensive operation.
    pub cost: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Depth,
    Fields,
    Aliases,
    RootFields,
    Directives,
    Cost,
}

impl Limit {
    /// The error's `extensions.code`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Depth => "DEPTH_LIMIT_EXCEEDED",
            Self::Fields => "FIELD_LIMIT_EXCEEDED",
            Self::Aliases => "ALIAS_LIMIT_EXCEEDED",
            Self::RootFields => "ROOT_FIELD_LIMIT_EXCEEDED",
            Self::Directives => "DIRECTIVE_LIMIT_EXCEEDED",
            Self::Cost => "COMPLEXITY_LIMIT_EXCEEDED",
        }
    }

    /// The setting that raises it.
    pub fn setting(self) -> &'static str {
        match self {
            Self::Depth => "GRAPHQL_MAX_DEPTH",
            Self::Fields => "GRAPHQL_MAX_FIELDS",
            Self::Aliases => "GRAPHQL_MAX_ALIASES",
            Self::RootFields => "GRAPHQL_MAX_ROOT_FIELDS",
            Self::Directives => "GRAPHQL_MAX_DIRECTIVES",
            Self::Cost => "GRAPHQL_MAX_COMPLEXITY",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `found` is the expanded count (saturating; it may be a lower bound when counting
    /// stopped early), `max` the limit.
    Exceeded { limit: Limit, max: usize, found: u64 },
    /// A fragment spreads itself, directly or through others.
    FragmentCycle { fragment: String },
}

impl Refusal {
    /// `GRAPHQL_VALIDATION_FAILED` for a cycle, the limit's code otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Exceeded { limit, .. } => limit.code(),
            Self::FragmentCycle { .. } => "GRAPHQL_VALIDATION_FAILED",
        }
    }

    /// A message a person understands.
    pub fn message(&self) -> String {
        match self {
            Self::Exceeded { limit, max, found } => {
                let found = if *found == u64::MAX { format!("at least {found}") } else { found.to_string() };
                let what = match limit {
                    Limit::Depth => format!("nests fields {found} levels deep"),
                    Limit::Fields => format!("selects {found} fields"),
                    Limit::Aliases => format!("uses {found} aliases"),
                    Limit::RootFields => format!("selects {found} top-level fields"),
                    Limit::Directives => format!("uses {found} directives"),
                    Limit::Cost => {
                        let what = format!("costs {found} (each field 1, times the page size of lists)");
                        return format!(
                            "the operation {what}; the limit is {max} ({}): ask for fewer items per list or fewer fields",
                            limit.setting()
                        );
                    }
                };
                format!("the operation {what} once fragments are expanded; the limit is {max} ({})", limit.setting())
            }
            Self::FragmentCycle { fragment } => {
                format!("fragment \"{fragment}\" spreads itself, directly or through other fragments")
            }
        }
    }

    /// As a GraphQL error: the message, no `locations`, and extensions `{ code, limit,
    /// found }` (for a cycle: `{ code, fragment }`).
    pub fn into_server_error(self) -> ServerError {
        let mut error = ServerError::new(self.message(), None);
        let mut extensions = ErrorExtensionValues::default();
        extensions.set("code", self.code());
        match self {
            Self::Exceeded { max, found, .. } => {
                extensions.set("limit", max);
                extensions.set("found", found);
            }
            Self::FragmentCycle { fragment } => extensions.set("fragment", fragment),
        }
        error.extensions = Some(extensions);
        error
    }
}

/// Checks the whole document (every operation and every fragment definition, used or
/// not: async-graphql's validation walks them all) against `limits`, in time linear in
/// the document's size. On success, the shape of the document's operations.
///
/// When several limits are exceeded, the first of depth, aliases, directives, root fields
/// and fields is reported, with the largest count found for it (in an operation or
/// in a fragment definition). A fragment cycle is reported before any limit.
pub fn check(document: &ExecutableDocument, context: &Context<'_>) -> Result<OperationShape, Refusal> {
    let limits = context.limits;
    let fragments = summarize_fragments(document, context)?;

    let mut shape = OperationShape::default();
    for (_, operation) in document.operations.iter() {
        let operation = &operation.node;
        let mut summary = summarize(&operation.selection_set.node, &fragments, context);
        let variable_directives =
            operation.variable_definitions.iter().map(|variable| count(variable.node.directives.len()));
        summary.directives = variable_directives
            .fold(summary.directives.saturating_add(count(operation.directives.len())), u64::saturating_add);
        shape.depth = shape.depth.max(summary.depth);
        shape.fields = shape.fields.saturating_add(summary.fields);
        shape.aliases = shape.aliases.saturating_add(summary.aliases);
        shape.directives = shape.directives.saturating_add(summary.directives);
        shape.root_fields = shape.root_fields.max(summary.top_fields);
        shape.cost = shape.cost.max(summary.cost);
    }

    // The largest fragment counts the limits must also hold for.
    let largest = fragments.summaries.iter().flatten().fold(Summary::default(), |largest, summary| Summary {
        depth: largest.depth.max(summary.depth),
        fields: largest.fields.max(summary.fields),
        aliases: largest.aliases.max(summary.aliases),
        directives: largest.directives.max(summary.directives),
        top_fields: 0,
        cost: 0,
    });

    // The most specific limit first, so a refusal names what the document abuses: 25,000
    // aliases are an alias problem before they are a field-count problem.
    let checks = [
        (Limit::Depth, limits.max_depth, shape.depth.max(largest.depth)),
        (Limit::Aliases, limits.max_aliases, shape.aliases.max(largest.aliases)),
        (Limit::Directives, limits.max_directives, shape.directives.max(largest.directives)),
        (Limit::RootFields, limits.max_root_fields, shape.root_fields),
        (Limit::Fields, limits.max_fields, shape.fields.max(largest.fields)),
        (Limit::Cost, limits.max_cost, shape.cost),
    ];
    for (limit, max, found) in checks {
        if found > count(max) {
            return Err(Refusal::Exceeded { limit, max, found });
        }
    }
    Ok(shape)
}

/// The expanded counts of a selection set (or of a fragment, with its own directives).
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    /// The deepest field nesting, this set's fields at depth 1 (`ofType` adds none).
    depth: u64,
    fields: u64,
    aliases: u64,
    directives: u64,
    /// Fields at this set's own level, through spreads and inline fragments.
    top_fields: u64,
    cost: u64,
}

impl Summary {
    /// Adds a sibling selection's counts: sums, and the deeper of the two depths.
    fn add(&mut self, other: &Self) {
        self.depth = self.depth.max(other.depth);
        self.fields = self.fields.saturating_add(other.fields);
        self.aliases = self.aliases.saturating_add(other.aliases);
        self.directives = self.directives.saturating_add(other.directives);
        self.top_fields = self.top_fields.saturating_add(other.top_fields);
        self.cost = self.cost.saturating_add(other.cost);
    }
}

/// Every fragment definition's summary, computed once.
struct Fragments<'a> {
    /// Fragment name to its position in `definitions` and `summaries`.
    index: HashMap<&'a str, usize>,
    /// In document order, so that which cycle is reported does not depend on hashing.
    definitions: Vec<(&'a str, &'a FragmentDefinition)>,
    /// `None` until summarised; all are `Some` once `summarize_fragments` returns.
    summaries: Vec<Option<Summary>>,
}

impl Fragments<'_> {
    /// The summary of the fragment spread as `name`: nothing for an unknown fragment.
    fn get(&self, name: &str) -> Option<&Summary> {
        self.index.get(name).and_then(|&i| self.summaries.get(i)).and_then(Option::as_ref)
    }
}

/// Summarises every fragment definition after the fragments it spreads (a post-order
/// walk of the spread graph with an explicit stack), refusing cycles.
fn summarize_fragments<'a>(document: &'a ExecutableDocument, context: &Context<'_>) -> Result<Fragments<'a>, Refusal> {
    let mut definitions: Vec<(&str, &Positioned<FragmentDefinition>)> =
        document.fragments.iter().map(|(name, definition)| (name.as_str(), definition)).collect();
    definitions.sort_unstable_by(|a, b| a.1.pos.cmp(&b.1.pos).then_with(|| a.0.cmp(b.0)));
    let definitions: Vec<(&str, &FragmentDefinition)> =
        definitions.into_iter().map(|(name, definition)| (name, &definition.node)).collect();
    let index = definitions.iter().enumerate().map(|(i, (name, _))| (*name, i)).collect();
    let mut fragments = Fragments { index, summaries: vec![None; definitions.len()], definitions };

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum State {
        New,
        Open,
        Done,
    }
    let mut state = vec![State::New; fragments.definitions.len()];

    /// A fragment being walked: its spreads, and how many of them were followed.
    struct Frame {
        fragment: usize,
        spreads: Vec<usize>,
        next: usize,
    }
    let open = |fragment: usize, fragments: &Fragments<'_>| {
        let mut spreads = Vec::new();
        if let Some((_, definition)) = fragments.definitions.get(fragment) {
            collect_spreads(&definition.selection_set.node, &fragments.index, &mut spreads);
        }
        Frame { fragment, spreads, next: 0 }
    };

    for root in 0..fragments.definitions.len() {
        if state.get(root) != Some(&State::New) {
            continue;
        }
        state[root] = State::Open;
        let mut stack = vec![open(root, &fragments)];
        while let Some(frame) = stack.last_mut() {
            if let Some(&spread) = frame.spreads.get(frame.next) {
                frame.next += 1;
                match state.get(spread).copied() {
                    Some(State::New) => {
                        state[spread] = State::Open;
                        stack.push(open(spread, &fragments));
                    }
                    Some(State::Open) => {
                        let fragment = fragments.definitions.get(spread).map(|(name, _)| *name).unwrap_or_default();
                        return Err(Refusal::FragmentCycle { fragment: fragment.to_owned() });
                    }
                    Some(State::Done) | None => {}
                }
            } else {
                let fragment = frame.fragment;
                stack.pop();
                if let Some((_, definition)) = fragments.definitions.get(fragment) {
                    let mut summary = summarize(&definition.selection_set.node, &fragments, context);
                    summary.directives = summary.directives.saturating_add(count(definition.directives.len()));
                    fragments.summaries[fragment] = Some(summary);
                }
                state[fragment] = State::Done;
            }
        }
    }
    Ok(fragments)
}

/// The known fragments spread anywhere in `set` (duplicates included).
fn collect_spreads(set: &SelectionSet, index: &HashMap<&str, usize>, out: &mut Vec<usize>) {
    for selection in &set.items {
        match &selection.node {
            Selection::Field(field) => collect_spreads(&field.node.selection_set.node, index, out),
            Selection::FragmentSpread(spread) => {
                out.extend(index.get(spread.node.fragment_name.node.as_str()));
            }
            Selection::InlineFragment(inline) => collect_spreads(&inline.node.selection_set.node, index, out),
        }
    }
}

/// The expanded counts of `set`, with every fragment it spreads already summarised.
fn summarize(set: &SelectionSet, fragments: &Fragments<'_>, context: &Context<'_>) -> Summary {
    let mut summary = Summary::default();
    for selection in &set.items {
        let item = match &selection.node {
            Selection::Field(field) => {
                let field = &field.node;
                let inner = summarize(&field.selection_set.node, fragments, context);
                let level = u64::from(field.name.node.as_str() != "ofType");
                Summary {
                    depth: inner.depth.saturating_add(level),
                    fields: inner.fields.saturating_add(1),
                    aliases: inner.aliases.saturating_add(u64::from(field.alias.is_some())),
                    directives: inner.directives.saturating_add(count(field.directives.len())),
                    top_fields: 1,
                    cost: page_size(field, context).saturating_mul(inner.cost).saturating_add(1),
                }
            }
            Selection::FragmentSpread(spread) => match fragments.get(spread.node.fragment_name.node.as_str()) {
                Some(fragment) => Summary {
                    directives: fragment.directives.saturating_add(count(spread.node.directives.len())),
                    ..*fragment
                },
                None => Summary::default(),
            },
            Selection::InlineFragment(inline) => {
                let inline = &inline.node;
                let mut inner = summarize(&inline.selection_set.node, fragments, context);
                inner.directives = inner.directives.saturating_add(count(inline.directives.len()));
                inner
            }
        };
        summary.add(&item);
    }
    summary
}

/// How many times a field's selection is resolved: its `first` or `last` (a literal or a
/// variable), or the length of its `ids` list (`nodes`), else the default page for a field
/// the schema pages, else once.
fn page_size(field: &Field, context: &Context<'_>) -> u64 {
    let requested = field.arguments.iter().find_map(|(name, value)| {
        if !matches!(name.node.as_str(), "first" | "last" | "ids") {
            return None;
        }
        let resolved =
            value.node.clone().into_const_with(|variable| context.variables.get(&variable).cloned().ok_or(()));
        let number = match resolved {
            Ok(Value::Number(number)) => number.as_u64(),
            Ok(Value::List(items)) => Some(count(items.len())),
            _ => None,
        };
        // Negative or not a number: the resolver refuses it; count the default page.
        Some(number.unwrap_or(context.cost.default_page))
    });
    match requested {
        Some(size) => size,
        None if context.cost.paged_fields.contains(field.name.node.as_str()) => context.cost.default_page,
        None => 1,
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use async_graphql::{Value, parser::parse_query};

    use super::*;

    const LIMITS: OperationLimits = OperationLimits {
        max_depth: 12,
        max_fields: 2000,
        max_aliases: 100,
        max_root_fields: 20,
        max_directives: 50,
        max_cost: 20_000,
    };

    fn check(document: &ExecutableDocument, limits: &OperationLimits) -> Result<OperationShape, Refusal> {
        let cost = CostModel { paged_fields: ["products".to_string()].into(), default_page: 20 };
        super::check(document, &Context { limits, cost: &cost, variables: &Variables::default() })
    }

    fn run(query: &str) -> Result<OperationShape, Refusal> {
        let document = parse_query(query).expect("the test document parses");
        check(&document, &LIMITS)
    }

    #[test]
    fn cost_multiplies_by_the_page_asked_for_or_the_default_page() {
        assert_eq!(run("{ a(first: 10) { b c } }").map(|shape| shape.cost), Ok(1 + 10 * 2));
        assert_eq!(run("{ a(last: 3) { b } d }").map(|shape| shape.cost), Ok(1 + 3 + 1));
        assert_eq!(run(r#"{ nodes(ids: ["x", "y", "z"]) { id } }"#).map(|shape| shape.cost), Ok(1 + 3));
        // A paged field queried without a page size costs the default page.
        assert_eq!(run("{ products { nodes { id } } }").map(|shape| shape.cost), Ok(1 + 20 * 2));
        let nested = "{ a(first: 100) { b(first: 100) { c(first: 100) { d } } } }";
        assert_eq!(exceeded(run(nested)), (Limit::Cost, 20_000, 1 + 100 * (1 + 100 * (1 + 100))));
        // From the variables, the operation's cost.
        let document = parse_query("query($n: Int) { a(first: $n) { b } }").expect("parses");
        let variables = Variables::from_json(serde_json::json!({ "n": 50 }));
        let cost = CostModel::default();
        let context = Context { limits: &LIMITS, cost: &cost, variables: &variables };
        assert_eq!(super::check(&document, &context).map(|shape| shape.cost), Ok(1 + 50));
    }

    fn exceeded(result: Result<OperationShape, Refusal>) -> (Limit, usize, u64) {
        match result {
            Err(Refusal::Exceeded { limit, max, found }) => (limit, max, found),
            other => panic!("expected a limit refusal, got {other:?}"),
        }
    }

    /// `query{...F0}` with `levels` fragments each spreading the next twice.
    fn fan_out(levels: usize, operation: &str) -> String {
        let mut text = operation.to_owned();
        for i in 0..levels {
            text.push_str(&format!(" fragment F{i} on Query{{...F{n} ...F{n}}}", n = i + 1));
        }
        text.push_str(&format!(" fragment F{levels} on Query{{__typename}}"));
        text
    }

    #[test]
    fn small_query_exact_shape() {
        let shape = run(r#"
            query Q($id: ID!) @a {
                product(id: $id) @include(if: true) {
                    id
                    label: name
                    ... on Product @skip(if: false) { price { amount currency } }
                    ...Parts
                }
                other: __typename
            }
            fragment Parts on Product @b { stock { count } }
        "#)
        .expect("within the limits");
        // Fields: product, id, label, price, amount, currency, stock, count, other.
        // Directives: @a, @include, @skip, @b.
        assert_eq!(shape, OperationShape { depth: 3, fields: 9, aliases: 2, root_fields: 2, directives: 4, cost: 9 });
    }

    #[test]
    fn counts_sum_over_operations_and_fragment_spreads() {
        let shape = run(r#"
            query A { a: x { ...F } y }
            query B { ...F ...F ...Missing }
            fragment F on T { p @d q { r } }
        "#)
        .expect("within the limits");
        // A: x, p, q, r, y = 5 fields; B: twice p, q, r = 6 fields. The cost is the
        // dearer operation's (no lists here: one per field).
        assert_eq!(shape, OperationShape { depth: 3, fields: 11, aliases: 1, root_fields: 4, directives: 3, cost: 6 });
    }

    #[test]
    fn fan_out_chain_is_refused_for_fields() {
        // Under one root field, so that only the field count is exceeded.
        for levels in [24, 40, 60] {
            let (limit, max, found) = exceeded(run(&fan_out(levels, "query{a{...F0}}")));
            assert_eq!((limit, max), (Limit::Fields, 2000));
            assert_eq!(found, (1 << levels) + 1);
        }
        // At the root, the same fan-out is first too many root fields.
        let (limit, _, found) = exceeded(run(&fan_out(24, "query{...F0}")));
        assert_eq!((limit, found), (Limit::RootFields, 1 << 24));
    }

    #[test]
    fn fan_out_counts_saturate() {
        let (limit, _, found) = exceeded(run(&fan_out(100, "query{a{...F0}}")));
        assert_eq!((limit, found), (Limit::Fields, u64::MAX));
        let message = Refusal::Exceeded { limit, max: 2000, found }.message();
        assert!(message.contains("at least 18446744073709551615 fields"), "{message}");
    }

    #[test]
    fn unused_fan_out_chain_is_refused() {
        for levels in [24, 40] {
            let (limit, _, found) = exceeded(run(&fan_out(levels, "query{__typename}")));
            assert_eq!(limit, Limit::Fields);
            assert!(found >= 1 << 24);
        }
    }

    #[test]
    fn fragment_cycles_are_refused() {
        let refusal = run("query{...F} fragment F on Query{...F}").expect_err("a cycle");
        assert_eq!(refusal, Refusal::FragmentCycle { fragment: "F".into() });
        let refusal =
            run("query{...A} fragment A on Query{...B} fragment B on Query{ x { ...A } }").expect_err("a cycle");
        // The walk starts at the first fragment in document order, so the answer is fixed.
        assert_eq!(refusal, Refusal::FragmentCycle { fragment: "A".into() });
        assert_eq!(refusal.code(), "GRAPHQL_VALIDATION_FAILED");
        // Unused, too.
        let refusal = run("query{x} fragment A on Query{...B} fragment B on Query{...A}").expect_err("a cycle");
        assert!(matches!(refusal, Refusal::FragmentCycle { .. }));
    }

    #[test]
    fn long_fragment_chains_do_not_overflow_the_stack() {
        let chain = |last: &str| {
            let mut text = String::from("query{...F0}");
            for i in 0..50_000 {
                text.push_str(&format!(" fragment F{i} on Query{{...F{}}}", i + 1));
            }
            text.push_str(&format!(" fragment F50000 on Query{{{last}}}"));
            text
        };
        let shape = run(&chain("__typename")).expect("a chain of one field");
        assert_eq!(shape, OperationShape { depth: 1, fields: 1, aliases: 0, root_fields: 1, directives: 0, cost: 1 });
        let refusal = run(&chain("...F0")).expect_err("a cycle");
        assert!(matches!(refusal, Refusal::FragmentCycle { .. }), "{refusal:?}");
    }

    #[test]
    fn many_aliases_are_refused() {
        let mut query = String::from("query{");
        for i in 0..25_000 {
            query.push_str(&format!("a{i}:__typename "));
        }
        query.push('}');
        let document = parse_query(&query).expect("parses");
        // Aliases come before root fields and fields in the check order.
        assert_eq!(exceeded(check(&document, &LIMITS)), (Limit::Aliases, 100, 25_000));
        let generous = OperationLimits { max_aliases: 100_000, ..LIMITS };
        assert_eq!(exceeded(check(&document, &generous)), (Limit::RootFields, 20, 25_000));
    }

    #[test]
    fn many_directives_are_refused() {
        let query = format!("query{{__typename{}}}", " @include(if:true)".repeat(50_000));
        assert_eq!(exceeded(run(&query)), (Limit::Directives, 50, 50_000));
    }

    #[test]
    fn directives_on_fragment_definitions_count_at_each_spread() {
        let shape = run("query @o { ...F ...F @s } fragment F on Query @d @e { x }").expect("within the limits");
        assert_eq!(shape.directives, 1 + 2 + 2 + 1);
    }

    #[test]
    fn deep_query_is_refused_for_depth() {
        let deep = |levels: usize| format!("query{{{}x{}}}", "a{".repeat(levels - 1), "}".repeat(levels - 1));
        assert_eq!(run(&deep(12)).map(|shape| shape.depth), Ok(12));
        assert_eq!(exceeded(run(&deep(13))), (Limit::Depth, 12, 13));
        // Depth hidden in a fragment, spread deep inside the operation.
        let query = format!("query{{a{{a{{...F}}}}}} fragment F on T{{{}x{}}}", "b{".repeat(10), "}".repeat(10));
        assert_eq!(exceeded(run(&query)), (Limit::Depth, 12, 13));
    }

    #[test]
    fn of_type_adds_no_depth() {
        let query = format!("query{{__type(name:\"X\"){{{}name{}}}}}", "ofType{".repeat(20), "}".repeat(20));
        let shape = run(&query).expect("ofType chains do not count");
        assert_eq!((shape.depth, shape.fields), (2, 22));
    }

    #[test]
    fn root_fields_through_fragments_count() {
        let shape = run(r#"
            query { a ...F ... on Query { d e } ... @include(if: true) { f } }
            fragment F on Query { b c { x y z } }
        "#)
        .expect("within the limits");
        assert_eq!(shape.root_fields, 6);
        assert_eq!(shape.fields, 9);

        let mut query = String::from("query{...F ... on Query{");
        for i in 0..12 {
            query.push_str(&format!("i{i} "));
        }
        query.push_str("}} fragment F on Query{");
        for i in 0..12 {
            query.push_str(&format!("f{i} "));
        }
        query.push('}');
        assert_eq!(exceeded(run(&query)), (Limit::RootFields, 20, 24));
    }

    #[test]
    fn root_fields_are_the_largest_operation() {
        let shape = run("query A { a b c } query B { d e } mutation C { f }").expect("within the limits");
        assert_eq!((shape.root_fields, shape.fields), (3, 6));
    }

    #[test]
    fn check_order_is_depth_first() {
        let mut query = String::from("query{");
        for i in 0..3000 {
            query.push_str(&format!("a{i}:x "));
        }
        query.push_str(&format!("{}x{}", "a{".repeat(20), "}".repeat(20)));
        query.push('}');
        assert_eq!(exceeded(run(&query)).0, Limit::Depth);
    }

    #[test]
    fn refusals_become_graphql_errors() {
        let error = Refusal::Exceeded { limit: Limit::Fields, max: 2000, found: 33_554_432 }.into_server_error();
        assert_eq!(
            error.message,
            "the operation selects 33554432 fields once fragments are expanded; the limit is 2000 (GRAPHQL_MAX_FIELDS)"
        );
        assert!(error.locations.is_empty());
        let extensions = error.extensions.expect("extensions");
        assert_eq!(extensions.get("code"), Some(&Value::from("FIELD_LIMIT_EXCEEDED")));
        assert_eq!(extensions.get("limit"), Some(&Value::from(2000)));
        assert_eq!(extensions.get("found"), Some(&Value::from(33_554_432)));

        let error = Refusal::FragmentCycle { fragment: "F".into() }.into_server_error();
        assert!(error.locations.is_empty());
        let extensions = error.extensions.expect("extensions");
        assert_eq!(extensions.get("code"), Some(&Value::from("GRAPHQL_VALIDATION_FAILED")));
        assert_eq!(extensions.get("fragment"), Some(&Value::from("F")));
        assert_eq!(extensions.get("limit"), None);

        for limit in [Limit::Depth, Limit::Fields, Limit::Aliases, Limit::RootFields, Limit::Directives] {
            let refusal = Refusal::Exceeded { limit, max: 1, found: 2 };
            assert_eq!(refusal.code(), limit.code());
            assert!(refusal.message().ends_with(&format!("the limit is 1 ({})", limit.setting())));
        }
    }

    /// graphql-js 16 (16.9 and later) `getIntrospectionQuery({ descriptions: true,
    /// specifiedByUrl: true, directiveIsRepeatable: true, schemaDescription: true,
    /// inputValueDeprecation: true })`.
    const INTROSPECTION_QUERY: &str = r#"
    query IntrospectionQuery {
      __schema {
        description
        queryType { name }
        mutationType { name }
        subscriptionType { name }
        types {
          ...FullType
        }
        directives {
          name
          description
          isRepeatable
          locations
          args(includeDeprecated: true) {
            ...InputValue
          }
        }
      }
    }

    fragment FullType on __Type {
      kind
      name
      description
      specifiedByURL
      fields(includeDeprecated: true) {
        name
        description
        args(includeDeprecated: true) {
          ...InputValue
        }
        type {
          ...TypeRef
        }
        isDeprecated
        deprecationReason
      }
      inputFields(includeDeprecated: true) {
        ...InputValue
      }
      interfaces {
        ...TypeRef
      }
      enumValues(includeDeprecated: true) {
        name
        description
        isDeprecated
        deprecationReason
      }
      possibleTypes {
        ...TypeRef
      }
    }

    fragment InputValue on __InputValue {
      name
      description
      type { ...TypeRef }
      defaultValue
      isDeprecated
      deprecationReason
    }

    fragment TypeRef on __Type {
      kind
      name
      ofType {
        kind
        name
        ofType {
          kind
          name
          ofType {
            kind
            name
            ofType {
              kind
              name
              ofType {
                kind
                name
                ofType {
                  kind
                  name
                  ofType {
                    kind
                    name
                    ofType {
                      kind
                      name
                      ofType {
                        kind
                        name
                      }
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
  "#;

    #[test]
    fn standard_introspection_query_passes() {
        assert_eq!(INTROSPECTION_QUERY.matches("ofType").count(), 9);
        let shape = run(INTROSPECTION_QUERY).expect("the standard introspection query passes");
        assert!(shape.depth <= 7, "{shape:?}");
        // TypeRef: 2 + 9 * 3 = 29 fields; InputValue: 5 + 30 = 35; FullType: 4 + 71 + 36
        // + 30 + 5 + 30 = 176; the operation: 1 + 1 + 6 + 177 + 41 = 226.
        assert_eq!(
            shape,
            OperationShape { depth: 6, fields: 226, aliases: 0, root_fields: 1, directives: 0, cost: 226 }
        );
    }
}
