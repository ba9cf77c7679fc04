"""Deterministic benchmark corpora, one per kind: same seed, same documents, no downloads;
how each analysis kind is called through the gateway and its answers judged; and the
generation benchmarks' prompts.

* classification: news snippets of 8-60 words on five topics, labelled with the topic
  they were written from (so a run can check that the engine still gets them right);
* ner: one to three short news sentences full of people, organisations and places;
* summarization: short articles of 4-8 sentences on one topic, with consistent names.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from nlp.v1 import (
    classification_pb2,
    classification_pb2_grpc,
    ner_pb2,
    ner_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
)

SEED = 20240611
LABELS = ("sports", "politics", "technology", "finance", "health")
# Distinct, deterministic prompts: instructions and continuations the model goes on
# with for a while (a prompt that ends early still counts what it produced).
PROMPTS: tuple[str, ...] = (
    "The history of the printing press begins",
    "Write a short story about a lighthouse keeper who",
    "Explain how a refrigerator works:",
    "The recipe for a simple tomato soup is as follows:",
    "In the year 2150, the first city on Mars",
    "Here are five tips for learning a new language:",
    "The main causes of the French Revolution were",
    "A good night's sleep is important because",
    "The rules of chess are simple to learn:",
    "Photosynthesis is the process by which",
    "Dear hiring manager, I am writing to apply for",
    "The old bridge over the river had stood for centuries, and",
    "To set up a home aquarium, you will need",
    "The difference between weather and climate is",
    "Once upon a time, in a village at the edge of a forest,",
    "The benefits of regular exercise include",
)


@dataclass(frozen=True)
class Corpus:
    """Requests of one kind plus what the texts were generated from."""

    kind: str
    texts: list[str]
    # One request message per text, of the kind's request type.
    requests: list[Any]
    # classification: the topic each text was written from; empty for other kinds.
    topics: list[str] = field(default_factory=list)
    # ner: the names put into each text; summarization: its sentence count.
    truth: list[Any] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        """Size of the texts for the report (words split on whitespace), and what they hold."""
        words = [len(text.split()) for text in self.texts]
        stats: dict[str, Any] = {
            "docs": len(self.texts),
            "words_min": min(words),
            "words_max": max(words),
            "words_mean": statistics.fmean(words),
            "chars_mean": statistics.fmean(len(text) for text in self.texts),
        }
        if self.kind == "ner":
            stats["names_mean"] = statistics.fmean(len(names) for names in self.truth)
        elif self.kind == "summarization":
            stats["sentences_min"], stats["sentences_max"] = min(self.truth), max(self.truth)
        return stats


def _fill(template: str, fillers: Mapping[str, Sequence[str]], rng: random.Random) -> str:
    return template.format(**{k: rng.choice(v) for k, v in fillers.items()})


# --- classification -----------------------------------------------------------------------

_TOPIC_FILLERS: dict[str, tuple[str, ...]] = {
    "team": ("City", "United", "the Rovers", "Athletic", "the Wanderers", "Real Sociedad"),
    "player": ("Marta Silva", "James Okafor", "Lena Hoffmann", "Diego Ramos", "Aiko Tanaka"),
    "cup": ("league", "cup", "Champions League", "national championship", "Olympic"),
    "score": ("2-1", "3-0", "1-1", "4-2", "0-1"),
    "party": ("the governing coalition", "the opposition", "the Greens", "the Liberals"),
    "minister": ("the finance minister", "the prime minister", "the interior minister"),
    "country": ("Germany", "Brazil", "India", "Canada", "Kenya", "Japan"),
    "company": ("Northwind", "Contoso", "Globex", "Initech", "Umbrella Systems"),
    "product": ("smartphone", "cloud database", "AI assistant", "laptop", "chip"),
    "pct": ("0.5", "1.2", "3", "4.8", "7", "12"),
    "amount": ("40", "120", "350", "900", "2.5 billion"),
    "condition": ("measles", "type 2 diabetes", "influenza", "heart disease", "asthma"),
    "agency": ("the health ministry", "the WHO", "the regulator", "the disease control agency"),
}

_TOPIC_TEMPLATES: dict[str, tuple[str, ...]] = {
    "sports": (
        "{team} beat their rivals {score} on Saturday in front of a sold-out crowd.",
        "{player} scored twice in the second half to send {team} into the {cup} final.",
        "The coach said he would rotate the squad ahead of the {cup} quarter-final next week.",
        "{player} signed a three-year contract extension worth a reported {amount} million.",
        "An injury to the starting goalkeeper forced a late change to the lineup.",
        "Tickets for the {cup} final sold out within hours of going on sale.",
        "After the match the captain praised the defence and the travelling fans.",
        "Fans celebrated the late winner long into the night.",
    ),
    "politics": (
        "{party} won a narrow majority in the regional election held on Sunday.",
        "Lawmakers in {country} debated the new immigration bill late into the night.",
        "{minister} resigned after weeks of pressure over a lobbying scandal.",
        "The senate voted to delay the budget until the coalition agrees on tax reform.",
        "Polls suggest {party} will lose seats in the capital at the next election.",
        "The president met leaders from {country} to discuss sanctions and border security.",
        "Opposition members walked out of parliament in protest at the emergency decree.",
        "The cabinet will meet again on Monday morning.",
    ),
    "technology": (
        "{company} unveiled a new {product} that runs large language models on the device.",
        "Researchers found a security flaw that lets attackers bypass the login screen.",
        "The update improves battery life and adds support for faster wireless charging.",
        "{company} will open a data centre in {country} to cut latency for its cloud users.",
        "Engineers rewrote the scheduler in Rust to reduce memory use by {pct} percent.",
        "The open-source release lets developers train the model on their own hardware.",
        "Reviewers praised the new {product} but said the software still feels unfinished.",
        "The new {product} ships to customers next month.",
    ),
    "finance": (
        "Shares of {company} fell {pct} percent after quarterly earnings missed forecasts.",
        "The central bank raised interest rates by a quarter point to fight inflation.",
        "Bond yields climbed as investors priced in slower growth in {country}.",
        "{company} agreed to buy a rival payments firm for {amount} million dollars.",
        "Analysts expect the stock market to stay volatile until the inflation data is out.",
        "The fund reported a {pct} percent return after shifting from equities into bonds.",
        "Banks tightened lending standards as mortgage defaults rose for a third quarter.",
        "Oil prices slipped as the dollar strengthened again.",
    ),
    "health": (
        "Cases of {condition} rose sharply this winter, according to {agency}.",
        "A new trial shows the drug lowers the risk of {condition} by {pct} percent.",
        "Doctors recommend thirty minutes of exercise a day to protect heart health.",
        "{agency} approved a vaccine for children after reviewing the safety data.",
        "Hospitals in {country} report long waiting lists for routine surgery and scans.",
        "The study links poor sleep to a higher risk of {condition} in older adults.",
        "Nurses warned that staff shortages are delaying treatment in emergency wards.",
        "Flu vaccination clinics open to everyone next week.",
    ),
}


def classification_corpus(docs: int, seed: int = SEED) -> Corpus:
    """``docs`` snippets, topics in turn, each 8-60 words, all against the five labels."""
    rng = random.Random(seed)
    texts, topics = [], []
    for i in range(docs):
        topic = LABELS[i % len(LABELS)]
        target = rng.randint(8, 60)
        templates = _TOPIC_TEMPLATES[topic]
        sentences = [
            _fill(template, _TOPIC_FILLERS, rng).split()
            for template in rng.sample(templates, len(templates))
        ]
        # Greedy fill up to the target; sentences that would overshoot it are skipped.
        words: list[str] = []
        for sentence in sentences:
            if len(words) + len(sentence) <= target:
                words += sentence
        # A target below every sentence's length gets the shortest sentence.
        words = words or min(sentences, key=len)
        texts.append(" ".join(words))
        topics.append(topic)
    labels = [classification_pb2.Label(name=name) for name in LABELS]
    requests = [classification_pb2.ClassifyRequest(text=text, labels=labels) for text in texts]
    return Corpus("classification", texts, requests, topics=topics)


# --- ner ----------------------------------------------------------------------------------

# Names from many languages and of several shapes (initials, hyphens, particles), so the
# recogniser meets more than one easy pattern.
_PEOPLE = (
    "Maria Fernández",
    "Kwame Mensah",
    "Priya Raghavan",
    "Olivia Bennett",
    "Hiroshi Nakamura",
    "Fatima Al-Sayed",
    "Lars Eriksson",
    "Chen Wei",
    "Amara Okonkwo",
    "Jean-Luc Moreau",
    "Sofia Rossi",
    "Daniel Kowalski",
    "Ana Lucía Gómez",
    "Tomasz Nowak",
    "Grace O'Brien",
    "Rahul Mehta",
    "Ingrid van der Berg",
    "Samuel J. Whitfield",
)
_ORGS = (
    "Siemens",
    "the United Nations",
    "Toyota",
    "Goldman Sachs",
    "the World Bank",
    "Microsoft",
    "Reuters",
    "Deutsche Bank",
    "the European Central Bank",
    "Samsung Electronics",
    "Unilever",
    "Oxford University",
    "the International Monetary Fund",
    "Airbus",
    "Nestlé",
    "the Red Cross",
)
_CITIES = (
    "Berlin",
    "Lagos",
    "Mumbai",
    "São Paulo",
    "Toronto",
    "Osaka",
    "Nairobi",
    "Madrid",
    "Chicago",
    "Sydney",
    "Warsaw",
    "Geneva",
    "Singapore",
    "Cape Town",
)
_COUNTRIES = (
    "Germany",
    "Nigeria",
    "India",
    "Brazil",
    "Canada",
    "Japan",
    "Kenya",
    "Spain",
    "Australia",
    "Poland",
    "France",
    "Mexico",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_ROLES = ("chief executive", "finance chief", "spokeswoman", "head of research", "chairman")

_NER_TEMPLATES = (
    "{person}, the {role} of {org}, said on {day} that the company would open an office in {city}.",
    "{person} met {person2} in {city} to discuss trade between {country} and {country2}.",
    "{org} hired {person} as its new {role}, the company said in a statement from {city}.",
    "Speaking in {city}, {person} of {org} warned that prices in {country} would keep rising.",
    "The government of {country} asked {person} to lead talks with {org} next month.",
    "{person2} won the {city} marathon on {day}, ahead of {person} from {country}.",
    "Shares of {org} rose after {person} told analysts in {city} that sales beat forecasts.",
    "{org} and {org2} agreed to build a factory near {city}, officials in {country} said.",
    "A spokesperson for {org} declined to comment on reports that {person} would step down.",
    "Police in {city} questioned {person} on {day} about a break-in at the offices of {org}.",
    "{person} flew from {city} to {city2} on {day} for a meeting with {person2} of {org}.",
    "Economists at {org} expect growth in {country} to slow, {person} wrote in a note.",
)


def ner_corpus(docs: int, seed: int = SEED) -> Corpus:
    """``docs`` texts of 1-3 news sentences; ``truth`` holds the names each text got."""
    rng = random.Random(seed)
    texts: list[str] = []
    truth: list[list[str]] = []
    for _ in range(docs):
        sentences, names = [], []
        for template in rng.sample(_NER_TEMPLATES, rng.choice((1, 1, 2, 2, 3))):
            # Two distinct draws where a template names two of a sort.
            person, person2 = rng.sample(_PEOPLE, 2)
            org, org2 = rng.sample(_ORGS, 2)
            city, city2 = rng.sample(_CITIES, 2)
            country, country2 = rng.sample(_COUNTRIES, 2)
            values = {
                "person": person,
                "person2": person2,
                "org": org,
                "org2": org2,
                "city": city,
                "city2": city2,
                "country": country,
                "country2": country2,
                "day": rng.choice(_DAYS),
                "role": rng.choice(_ROLES),
            }
            sentences.append(template.format(**values))
            names += [v for k, v in values.items() if f"{{{k}}}" in template and k != "role"]
        texts.append(" ".join(sentences))
        truth.append(names)
    requests = [ner_pb2.NerRequest(text=text) for text in texts]
    return Corpus("ner", texts, requests, truth=truth)


# --- summarization ------------------------------------------------------------------------

# A lead sentence per topic, so every article opens like a news story before its body.
_LEADS: dict[str, tuple[str, ...]] = {
    "sports": ("{team} moved to the top of the table after a dramatic weekend.",),
    "politics": ("Politics in {country} was dominated this week by a row over the budget.",),
    "technology": ("{company} had its busiest week of announcements in years.",),
    "finance": ("Markets in {country} had a turbulent week as investors weighed new data.",),
    "health": ("Health officials in {country} are preparing for a difficult season.",),
}


def summarization_corpus(docs: int, seed: int = SEED) -> Corpus:
    """``docs`` articles of 4-8 sentences; ``truth`` holds each article's sentence count.

    Every name in an article is drawn once, so an article keeps to one team, company or
    country throughout, as a real one would.
    """
    rng = random.Random(seed)
    texts: list[str] = []
    counts: list[int] = []
    for i in range(docs):
        topic = LABELS[i % len(LABELS)]
        values = {k: rng.choice(v) for k, v in _TOPIC_FILLERS.items()}
        sentences = rng.randint(4, 8)
        body = rng.sample(_TOPIC_TEMPLATES[topic], sentences - 1)
        lead = rng.choice(_LEADS[topic])
        filled = (t.format(**values) for t in [lead, *body])
        # Fillers such as "the Rovers" open some sentences: capitalise as an editor would.
        texts.append(" ".join(f[0].upper() + f[1:] for f in filled))
        counts.append(sentences)
    requests = [summarization_pb2.SummarizeRequest(text=text) for text in texts]
    return Corpus("summarization", texts, requests, topics=[], truth=counts)


CORPORA: dict[str, Callable[[int, int], Corpus]] = {
    "classification": classification_corpus,
    "ner": ner_corpus,
    "summarization": summarization_corpus,
}


# --- how each kind is called and judged ---------------------------------------------------

# A kind's unary gateway method: ``await rpc(request, timeout=...)``.
Rpc = Callable[..., Awaitable[Message]]


def _mean(values: Iterable[float]) -> float:
    listed = list(values)
    return statistics.fmean(listed) if listed else float("nan")


def _classification_check(corpus: Corpus, outputs: Sequence[Any]) -> dict[str, float]:
    responses: Sequence[classification_pb2.ClassifyResponse] = outputs
    hits = [r.top_label == topic for r, topic in zip(responses, corpus.topics, strict=False)]
    return {"top_label_accuracy": _mean(float(h) for h in hits)}


def _ner_check(corpus: Corpus, outputs: Sequence[Any]) -> dict[str, float]:
    responses: Sequence[ner_pb2.NerResponse] = outputs
    found, planted = 0, 0
    for response, names in zip(responses, corpus.truth, strict=False):
        texts = [e.text for e in response.entities if e.text]
        planted += len(names)
        # Overlap, not equality: "the United Nations" may come back as "United Nations".
        found += sum(any(t in name or name in t for t in texts) for name in names)
    return {
        "entities_per_doc": _mean(float(len(r.entities)) for r in responses),
        "planted_name_recall": found / planted if planted else float("nan"),
    }


def _summarization_check(corpus: Corpus, outputs: Sequence[Any]) -> dict[str, float]:
    responses: Sequence[summarization_pb2.SummarizeResponse] = outputs
    kept = [len(r.sentences) for r in responses]
    return {
        "summary_sentences_mean": _mean(float(k) for k in kept),
        "kept_fraction": _mean(k / n for k, n in zip(kept, corpus.truth, strict=False)),
    }


@dataclass(frozen=True)
class KindSpec:
    """How to call one kind through the gateway and judge its answers."""

    name: str
    rpc: Callable[[grpc.aio.Channel], Rpc]
    # What must agree between a direct answer and the platform's for the same text.
    key: Callable[[Any], object]
    check: Callable[[Corpus, Sequence[Any]], dict[str, float]]


KINDS: dict[str, KindSpec] = {
    "classification": KindSpec(
        "classification",
        lambda channel: classification_pb2_grpc.ClassificationStub(channel).Classify,
        lambda r: r.top_label,
        _classification_check,
    ),
    "ner": KindSpec(
        "ner",
        lambda channel: ner_pb2_grpc.NerStub(channel).Recognize,
        lambda r: tuple((e.start, e.end, e.label) for e in r.entities),
        _ner_check,
    ),
    "summarization": KindSpec(
        "summarization",
        lambda channel: summarization_pb2_grpc.SummarizationStub(channel).Summarize,
        lambda r: tuple((s.start, s.end) for s in r.sentences),
        _summarization_check,
    ),
}
