mod support;

fn main() {
    support::run(cases![]);
}
