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
definition of a match. Pure: :meth:`match` equals asking every rule (``tests/test_alerts.py``
checks it against that on generated lines)."""
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
        """``[(line, rules it matches)]`` for the lines of ``lines`` that match any (job
        patterns are the caller's), in order."""
        if self.empty or not lines:
            return []
        candidates = {}   # line index -> candidate rules
        others, by_source, with_attrs = self.others, self.by_source, self.with_attrs
        if others:
            candidates = {i: set(others) for i in range(len(lines))}
        if by_source:
            for i, line in enumerate(lines):
                rules = by_source.get(line.get("source"))
                if rules:
                    candidates.setdefault(i, set()).update(rules)
        if with_attrs:
            for i, line in enumerate(lines):
                if line.get("attributes"):
                    candidates.setdefault(i, set()).update(with_attrs)
        if self.words:
            for i, rules in self._word_hits(lines):
                candidates.setdefault(i, set()).update(rules)
        out, exact = [], self.exact
        for i in sorted(candidates):
            line = lines[i]
            level = LEVELS[line["level"]]
            matched = [r for r in candidates[i] if r.line_filter.min_level <= level
                       and (r in exact or r.line_filter.matches(line))]
            if matched:
                out.append((line, matched))
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
