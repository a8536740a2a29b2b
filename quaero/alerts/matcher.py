"""Which rules the lines of a batch match, fast: the evaluator asks it for every
committed line.

Asking each rule's ``LineFilter.matches`` in turn cost 14 µs a line with 100 rules
(bench/alerts.py: ingest's own CPU per line is about 45 µs, so +30 %). Most rules name a
word or a source, and most lines have neither. So the rules are indexed by what they name:
a source is one dictionary lookup per line; the words of every rule are one Aho-Corasick
automaton (pyahocorasick, C) run once over the batch's messages, joined and lowered
(0.2 µs a line for 60 words, where testing each word on each line took 2.7 µs); rules that
need attributes are looked at only for lines that have some; the rest are tested on every
line. Only the candidates are tested in full with ``matches``, which stays the one
definition of a match; a rule whose index entry is its whole filter (a source, or a word,
and a level) is not tested again. Pure: :meth:`match` equals asking every rule
(``tests/test_alerts.py`` checks it against that on generated lines)."""
from bisect import bisect_right

from ..levels import LEVELS

SEP = "\x00"   # no message holds it (fields.safe_text), no rule's word may


class LineMatcher:
    def __init__(self, rules):
        """``rules``: the rules that look at lines (``match``, ``absence``)."""
        self.by_source = {}   # source -> rules
        self.with_attrs = []
        self.others = []
        words = {}            # folded word -> rules
        self.exact = set()    # rules whose index entry is their whole filter but the level
        for rule in rules:
            f = rule.line_filter
            if (f.source is None) + (f.folded is None) == 1 and not f.attrs and f.trace_id is None:
                self.exact.add(rule)
            if f.source is not None:
                self.by_source.setdefault(f.source, []).append(rule)
            elif f.folded is not None:
                words.setdefault(f.folded, []).append(rule)
            elif f.attrs:
                self.with_attrs.append(rule)
            else:
                self.others.append(rule)
        self.automaton = _automaton(words)
        self.words = words
        self.empty = not rules

    def match(self, lines):
        """``{rule: [the lines of lines it matches, in order]}`` (job patterns are the
        caller's). Built rule by rule: each rule is in one index, so its lines come in
        order from one pass."""
        out = {}
        if self.empty or not lines:
            return out
        exact = self.exact

        def offer(rule, line):
            if LEVELS[line["level"]] >= rule.line_filter.min_level and (
                    rule in exact or rule.line_filter.matches(line)):
                found = out.get(rule)
                if found is None:
                    out[rule] = [line]
                elif found[-1] is not line:   # (a word twice in one line)
                    found.append(line)

        by_source = self.by_source
        if by_source:
            for line in lines:
                rules = by_source.get(line.get("source"))
                if rules:
                    for rule in rules:
                        offer(rule, line)
        if self.words:
            for i, rules in self._word_hits(lines):
                for rule in rules:
                    offer(rule, lines[i])
        for rule in self.with_attrs:
            for line in lines:
                if line.get("attributes"):
                    offer(rule, line)
        for rule in self.others:
            for line in lines:
                offer(rule, line)
        return out

    def _word_hits(self, lines):
        """``(line index, rules)`` for each rule's word found in a line's message."""
        messages = [ln["message"] for ln in lines]
        joined = SEP.join(messages)
        lowered = joined.lower()
        if self.automaton is None:
            lows = [m.lower() for m in messages]
            return [(i, rules) for i, low in enumerate(lows)
                    for word, rules in self.words.items() if word in low]
        if len(lowered) != len(joined):   # a letter whose lowercase is longer: line by line
            return [(i, rules) for i, m in enumerate(messages)
                    for _, (_, rules) in self.automaton.iter(m.lower())]
        starts, at = [], 0
        for m in messages:
            starts.append(at)
            at += len(m) + 1
        return [(bisect_right(starts, end) - 1, rules)
                for end, (_, rules) in self.automaton.iter(lowered)]


def _automaton(words):
    if not words:
        return None
    try:
        import ahocorasick
    except ImportError:  # the server extra installs it; without it, word by word
        return None
    a = ahocorasick.Automaton()
    for word, rules in words.items():
        a.add_word(word, (word, rules))
    a.make_automaton()
    return a
