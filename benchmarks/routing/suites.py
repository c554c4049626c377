"""Checkable suites for routing between two real small language models: arithmetic, facts, short
Python functions and instruction following, generated in code from a fixed seed (nothing is
downloaded). Every prompt is a plain-text few-shot completion, the same text for both models (one
of them has no chat template, and the router forwards one request to either), and every item
carries its stop strings, its max_tokens and a checker of the completion (the text before the
stop string, as a server with those stop strings returns it).

- Q/A items ("Q: ...\\nA: ...", three solved examples of the same task first; sums as bare
  equations, "12 + 30 = 42") stop at a newline. The checker reads that one line and is lenient
  about form, strict about content: the first number for a number, a whole-word match (accents
  and case aside) for a fact, the words alone for an instruction, whatever punctuation or quotes
  surround them.
- Code items end with a function's `def` line and docstring after two solved functions; the
  model writes the body, which is cut where the indentation ends and run on test cases in a
  separate process (benchmarks/routing/code_sandbox.py)."""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from benchmarks.routing.code_sandbox import CodeCase, run_function

SEED = 0
QA_STOP = ("\n",)
# A blank line ends a function in the prompt's examples; the others end it where a model writes
# no blank line before its next top-level statement.
CODE_STOP = ("\n\n", "\ndef ", "\nclass ", "\nif __name__", "\nprint", "\nassert", "\n#")
QA_MAX_TOKENS = 32
CODE_MAX_TOKENS = 48
ARITHMETIC_ITEMS_PER_TASK = 40
INSTRUCTION_ITEMS_PER_TASK = 20
CONTINENT_ITEMS = 30


@dataclass(frozen=True, slots=True)
class SuiteItem:
    category: str
    task: str
    key: str
    prompt: str
    expected: str
    stop: tuple[str, ...]
    max_tokens: int
    check: Callable[[str], bool] = field(compare=False, repr=False)

    def is_correct(self, completion: str) -> bool:
        return self.check(completion)

    def as_dict(self) -> dict:
        return {"category": self.category, "task": self.task, "key": self.key, "prompt": self.prompt,
                "expected": self.expected}


# Checkers --------------------------------------------------------------------------------------

def first_line(completion: str) -> str:
    return completion.split("\n", 1)[0].strip()


def normalized(text: str) -> str:
    """Lower case, accents dropped, runs of whitespace as one space."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(character for character in decomposed if not unicodedata.combining(character))
    return " ".join(plain.lower().split())


def bare(text: str) -> str:
    """The text without the quotes, brackets and final punctuation around it."""
    return text.strip().strip("\"'`*()[]").rstrip(".!,;:").strip("\"'`*()[] ")


def check_number(expected: int, completion: str) -> bool:
    """The first number on the first line is `expected`."""
    found = re.search(r"-?\d+", first_line(completion).replace(",", ""))
    return found is not None and int(found.group()) == expected


def check_phrase(accepted: Sequence[str], completion: str) -> bool:
    """One of the `accepted` phrases is on the first line, as whole words."""
    line = normalized(first_line(completion))
    return any(re.search(rf"(?<!\w){re.escape(normalized(phrase))}(?!\w)", line) for phrase in accepted)


def check_exact(expected: str, completion: str) -> bool:
    """The first line is `expected` (case counts), whatever quotes or final stop surround it."""
    return bare(first_line(completion)) == expected


def check_letter(letter: str, completion: str) -> bool:
    return bare(first_line(completion)).lower() == letter


def check_repeated(word: str, times: int, completion: str) -> bool:
    """The first line is `word` `times` times, however separated."""
    return [found.lower() for found in re.findall(r"[A-Za-z]+", first_line(completion))] == [word] * times


def check_numbers(expected: Sequence[int], completion: str) -> bool:
    return [int(found) for found in re.findall(r"-?\d+", first_line(completion))] == list(expected)


def function_body(completion: str) -> str:
    """The completion up to its first line that is not indented: where the function ends."""
    body = []
    for line in completion.split("\n"):
        if line.strip() and not line[0].isspace():
            break
        body.append(line)
    return "\n".join(body)


def check_code(header: str, name: str, cases: Sequence[CodeCase], completion: str) -> bool:
    return run_function(header + function_body(completion), name, cases).passed


# Prompts ---------------------------------------------------------------------------------------

def qa_prompt(shots: Sequence[tuple[str, str]], question: str) -> str:
    return "".join(f"Q: {shot_question}\nA: {shot_answer}\n\n" for shot_question, shot_answer in shots) + \
        f"Q: {question}\nA:"


def qa_item(category: str, task: str, key: str, shots: Sequence[tuple[str, str]], question: str, expected: str,
            check: Callable[[str], bool]) -> SuiteItem:
    return SuiteItem(category, task, f"{task}:{key}", qa_prompt(shots, question), expected, QA_STOP, QA_MAX_TOKENS,
                     check)


# Arithmetic ------------------------------------------------------------------------------------

# Asked as bare equations ("23 + 14 ="), not as questions ("What is 23 + 14?"): both models do
# better so (on 30 sums, differences and products: SmolLM2 12 right against 7, Gemma 13 against 1).
ARITHMETIC = {
    # task: (operator, the operands' draw, the solved examples)
    "add": ("+", lambda rng: (rng.randint(2, 50), rng.randint(2, 50)), [(23, 14), (12, 30), (5, 8)]),
    "subtract": ("-", lambda rng: _ordered(rng.randint(2, 60), rng.randint(1, 59)), [(58, 23), (40, 12), (9, 4)]),
    "multiply": ("*", lambda rng: (rng.randint(2, 9), rng.randint(2, 12)), [(4, 6), (7, 3), (9, 8)]),
}


def _ordered(first: int, second: int) -> tuple[int, int]:
    """The larger first: a difference that is not negative."""
    return (first, second) if first >= second else (second, first)


def _calculate(operator: str, first: int, second: int) -> int:
    return {"+": first + second, "-": first - second, "*": first * second}[operator]


def arithmetic_items(per_task: int = ARITHMETIC_ITEMS_PER_TASK) -> list[SuiteItem]:
    items = []
    for task, (operator, operands, examples) in ARITHMETIC.items():
        shots = "".join(f"{a} {operator} {b} = {_calculate(operator, a, b)}\n" for a, b in examples)
        rng = random.Random(f"{SEED}:{task}")
        chosen: list[tuple[int, int]] = []
        while len(chosen) < per_task:
            pair = operands(rng)
            if pair not in chosen and pair not in examples:
                chosen.append(pair)
        for a, b in chosen:
            answer = _calculate(operator, a, b)
            items.append(SuiteItem("arithmetic", task, f"{task}:{a}{operator}{b}", f"{shots}{a} {operator} {b} =",
                                   str(answer), QA_STOP, QA_MAX_TOKENS, partial(check_number, answer)))
    return items


# Facts -----------------------------------------------------------------------------------------

# Country | capital (and other accepted names) | continent, empty where it is debatable. No
# country whose capital is named after it (Mexico City, Kuwait, Singapore): a model that repeats
# the question's country would be right by accident.
COUNTRIES = """
France | Paris | Europe
Germany | Berlin | Europe
Italy | Rome | Europe
Spain | Madrid | Europe
Portugal | Lisbon | Europe
United Kingdom | London | Europe
Ireland | Dublin | Europe
Netherlands | Amsterdam | Europe
Belgium | Brussels | Europe
Switzerland | Bern / Berne | Europe
Austria | Vienna | Europe
Poland | Warsaw | Europe
Czech Republic | Prague | Europe
Hungary | Budapest | Europe
Greece | Athens | Europe
Sweden | Stockholm | Europe
Norway | Oslo | Europe
Denmark | Copenhagen | Europe
Finland | Helsinki | Europe
Iceland | Reykjavik | Europe
Russia | Moscow |
Ukraine | Kyiv / Kiev | Europe
Romania | Bucharest | Europe
Bulgaria | Sofia | Europe
Serbia | Belgrade | Europe
Croatia | Zagreb | Europe
Slovakia | Bratislava | Europe
Slovenia | Ljubljana | Europe
Estonia | Tallinn | Europe
Latvia | Riga | Europe
Lithuania | Vilnius | Europe
Belarus | Minsk | Europe
Albania | Tirana | Europe
Turkey | Ankara |
Malta | Valletta | Europe
Cyprus | Nicosia |
Japan | Tokyo | Asia
China | Beijing / Peking | Asia
India | New Delhi | Asia
South Korea | Seoul | Asia
North Korea | Pyongyang | Asia
Thailand | Bangkok | Asia
Vietnam | Hanoi | Asia
Indonesia | Jakarta | Asia
Philippines | Manila | Asia
Malaysia | Kuala Lumpur | Asia
Pakistan | Islamabad | Asia
Bangladesh | Dhaka / Dacca | Asia
Nepal | Kathmandu | Asia
Sri Lanka | Colombo / Sri Jayawardenepura Kotte | Asia
Afghanistan | Kabul | Asia
Iran | Tehran | Asia
Iraq | Baghdad | Asia
Saudi Arabia | Riyadh | Asia
Israel | Jerusalem | Asia
Jordan | Amman | Asia
Lebanon | Beirut | Asia
Syria | Damascus | Asia
Qatar | Doha | Asia
United Arab Emirates | Abu Dhabi | Asia
Mongolia | Ulaanbaatar / Ulan Bator | Asia
Kazakhstan | Astana | Asia
Uzbekistan | Tashkent | Asia
Cambodia | Phnom Penh | Asia
Laos | Vientiane | Asia
Egypt | Cairo | Africa
Nigeria | Abuja | Africa
Kenya | Nairobi | Africa
Ethiopia | Addis Ababa | Africa
South Africa | Pretoria / Cape Town / Bloemfontein | Africa
Morocco | Rabat | Africa
Algeria | Algiers | Africa
Tunisia | Tunis | Africa
Libya | Tripoli | Africa
Ghana | Accra | Africa
Senegal | Dakar | Africa
Uganda | Kampala | Africa
Tanzania | Dodoma | Africa
Zimbabwe | Harare | Africa
Zambia | Lusaka | Africa
Angola | Luanda | Africa
Sudan | Khartoum | Africa
Somalia | Mogadishu | Africa
Cameroon | Yaounde | Africa
Madagascar | Antananarivo | Africa
Mali | Bamako | Africa
Rwanda | Kigali | Africa
Mozambique | Maputo | Africa
United States | Washington | North America
Canada | Ottawa | North America
Brazil | Brasilia | South America
Argentina | Buenos Aires | South America
Chile | Santiago | South America
Peru | Lima | South America
Colombia | Bogota | South America
Venezuela | Caracas | South America
Ecuador | Quito | South America
Bolivia | Sucre / La Paz | South America
Paraguay | Asuncion | South America
Uruguay | Montevideo | South America
Cuba | Havana | North America
Jamaica | Kingston | North America
Costa Rica | San Jose | North America
Nicaragua | Managua | North America
Honduras | Tegucigalpa | North America
Haiti | Port-au-Prince | North America
Dominican Republic | Santo Domingo | North America
El Salvador | San Salvador | North America
Australia | Canberra | Oceania
New Zealand | Wellington | Oceania
Fiji | Suva | Oceania
Papua New Guinea | Port Moresby | Oceania
"""

CAPITAL_SHOTS = ("Italy", "Canada", "Kenya")
CONTINENT_SHOTS = ("Brazil", "Germany", "Japan")
# Accepted names of a continent in an answer.
CONTINENT_NAMES = {"Oceania": ("Oceania", "Australia")}

# Well-known facts: question, accepted answers.
GENERAL_FACTS = [
    ("What is the chemical symbol for gold?", ("Au",)),
    ("What is the chemical symbol for silver?", ("Ag",)),
    ("What is the chemical symbol for iron?", ("Fe",)),
    ("What is the chemical symbol for sodium?", ("Na",)),
    ("What is the chemical symbol for oxygen?", ("O",)),
    ("Which planet is closest to the Sun?", ("Mercury",)),
    ("Which is the largest planet in the solar system?", ("Jupiter",)),
    ("Which planet is known as the Red Planet?", ("Mars",)),
    ("Which planet is famous for its rings?", ("Saturn",)),
    ("How many days are there in a week?", ("7", "seven")),
    ("How many legs does a spider have?", ("8", "eight")),
    ("How many continents are there?", ("7", "seven")),
    ("How many hours are there in a day?", ("24", "twenty-four", "twenty four")),
    ("How many sides does a triangle have?", ("3", "three")),
    ("At how many degrees Celsius does water boil at sea level?", ("100", "one hundred")),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("What is the tallest mountain on Earth?", ("Everest",)),
    ("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    ("Who painted the Mona Lisa?", ("Leonardo", "da Vinci")),
    ("Who was the first president of the United States?", ("George Washington",)),
    ("What language is spoken in Brazil?", ("Portuguese",)),
    ("What is the currency of Japan?", ("yen",)),
    ("What is the largest mammal?", ("blue whale",)),
    ("What gas do plants take in from the air?", ("carbon dioxide", "CO2")),
    ("What is the hardest natural substance?", ("diamond",)),
    ("In which country are the pyramids of Giza?", ("Egypt",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What is frozen water called?", ("ice",)),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("How many minutes are there in an hour?", ("60", "sixty")),
]
GENERAL_SHOTS = [("How many legs does a dog have?", "4"), ("What color is grass?", "Green"),
                 ("What is the chemical symbol for water?", "H2O")]


@dataclass(frozen=True, slots=True)
class Country:
    name: str
    capitals: tuple[str, ...]
    continent: str


def countries() -> list[Country]:
    table = []
    for line in COUNTRIES.strip().splitlines():
        name, capitals, continent = (part.strip() for part in line.split("|"))
        table.append(Country(name, tuple(capital.strip() for capital in capitals.split("/")), continent))
    return table


def _capital_question(country: str) -> str:
    return f"What is the capital of {country}?"


def _continent_question(country: str) -> str:
    return f"On which continent is {country}?"


def fact_items(continent_items: int = CONTINENT_ITEMS) -> list[SuiteItem]:
    table = countries()
    by_name = {country.name: country for country in table}
    capital_shots = [(_capital_question(name), by_name[name].capitals[0]) for name in CAPITAL_SHOTS]
    items = [qa_item("facts", "capital", country.name, capital_shots, _capital_question(country.name),
                     country.capitals[0], partial(check_phrase, country.capitals))
             for country in table if country.name not in CAPITAL_SHOTS]
    continent_shots = [(_continent_question(name), by_name[name].continent) for name in CONTINENT_SHOTS]
    placed = [country for country in table if country.continent and country.name not in CONTINENT_SHOTS]
    for country in random.Random(f"{SEED}:continent").sample(placed, continent_items):
        accepted = CONTINENT_NAMES.get(country.continent, (country.continent,))
        items.append(qa_item("facts", "continent", country.name, continent_shots, _continent_question(country.name),
                             country.continent, partial(check_phrase, accepted)))
    for number, (question, accepted) in enumerate(GENERAL_FACTS):
        items.append(qa_item("facts", "general", str(number), GENERAL_SHOTS, question, accepted[0],
                             partial(check_phrase, accepted)))
    return items


# Instructions ----------------------------------------------------------------------------------

WORDS = ("apple", "house", "river", "green", "table", "music", "garden", "window", "paper", "orange", "tiger",
         "cloud", "bread", "chair", "summer", "planet", "yellow", "doctor", "pencil", "flower", "bottle", "rabbit",
         "silver", "castle", "winter", "forest", "candle", "mirror", "button", "ocean", "horse", "lemon", "street",
         "basket", "dragon", "jacket", "monkey", "pillow", "rocket", "violin")
SHOT_WORDS = ("cat", "book", "tree")


def _instruction(task: str, word: str) -> tuple[str, str, Callable[[str], bool]]:
    """The question about `word`, its expected answer and the checker."""
    if task == "uppercase":
        return f"Write the word {word} in capital letters.", word.upper(), partial(check_exact, word.upper())
    if task == "lowercase":
        return f"Write the word {word.upper()} in lowercase letters.", word, partial(check_exact, word)
    if task == "repeat":
        return f"Repeat the word {word} three times.", " ".join([word] * 3), partial(check_repeated, word, 3)
    if task == "first_letter":
        return f"What is the first letter of the word {word}?", word[0], partial(check_letter, word[0])
    if task == "letter_count":
        return f"How many letters are in the word {word}?", str(len(word)), partial(check_number, len(word))
    raise ValueError(f"unknown instruction task {task!r}")


WORD_TASKS = ("uppercase", "lowercase", "repeat", "first_letter", "letter_count")
COUNTING_SHOTS = ((3, 6), (10, 14), (21, 25))


def _counting(start: int, stop: int) -> tuple[str, str, Callable[[str], bool]]:
    numbers = list(range(start, stop + 1))
    return (f"Write the numbers from {start} to {stop}, separated by commas.", ", ".join(map(str, numbers)),
            partial(check_numbers, numbers))


def instruction_items(per_task: int = INSTRUCTION_ITEMS_PER_TASK) -> list[SuiteItem]:
    items = []
    for task in WORD_TASKS:
        shots = [_instruction(task, word)[:2] for word in SHOT_WORDS]
        for word in random.Random(f"{SEED}:{task}").sample(WORDS, per_task):
            question, expected, check = _instruction(task, word)
            items.append(qa_item("instructions", task, word, shots, question, expected, check))
    shots = [_counting(start, stop)[:2] for start, stop in COUNTING_SHOTS]
    rng = random.Random(f"{SEED}:counting")
    ranges: list[tuple[int, int]] = []
    while len(ranges) < per_task:
        start = rng.randint(1, 40)
        pair = (start, start + rng.randint(3, 6))
        if pair not in ranges and pair not in COUNTING_SHOTS:
            ranges.append(pair)
    for start, stop in ranges:
        question, expected, check = _counting(start, stop)
        items.append(qa_item("instructions", "counting", f"{start}-{stop}", shots, question, expected, check))
    return items


# Code ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CodeTask:
    name: str
    parameters: str
    doc: str
    reference: Callable
    inputs: tuple[tuple, ...]

    @property
    def header(self) -> str:
        """The function's first two lines, the docstring's line unended: the model writes its
        newline (a prompt that ends in one splits the indentation's usual token)."""
        return f'def {self.name}({self.parameters}):\n    """{self.doc}"""'

    def cases(self) -> list[CodeCase]:
        return [CodeCase(repr(arguments), repr(self.reference(*arguments))) for arguments in self.inputs]


CODE_SHOTS = (
    'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n',
    'def is_negative(n):\n    """Return True if the number n is below zero, else False."""\n    return n < 0\n',
)

CODE_TASKS = (
    CodeTask("reverse_string", "s", "Return the string s reversed.", lambda s: s[::-1],
             (("hello",), ("ab",), ("",), ("racecar x",))),
    CodeTask("is_even", "n", "Return True if n is even, else False.", lambda n: n % 2 == 0, ((4,), (7,), (0,), (-3,))),
    CodeTask("is_odd", "n", "Return True if n is odd, else False.", lambda n: n % 2 == 1, ((4,), (7,), (0,), (-3,))),
    CodeTask("square", "x", "Return x squared.", lambda x: x * x, ((3,), (-4,), (0,))),
    CodeTask("cube", "x", "Return x cubed.", lambda x: x ** 3, ((2,), (-3,), (0,))),
    CodeTask("add_one", "n", "Return n plus one.", lambda n: n + 1, ((1,), (-1,), (41,))),
    CodeTask("double", "n", "Return twice the number n.", lambda n: 2 * n, ((3,), (-5,), (0,))),
    CodeTask("half", "n", "Return half of the number n.", lambda n: n / 2, ((4,), (5,), (-3,))),
    CodeTask("max_of_two", "a, b", "Return the larger of a and b.", max, ((3, 5), (9, 2), (-1, -7))),
    CodeTask("min_of_two", "a, b", "Return the smaller of a and b.", min, ((3, 5), (9, 2), (-1, -7))),
    CodeTask("absolute_value", "n", "Return the absolute value of n.", abs, ((-5,), (3,), (0,))),
    CodeTask("is_positive", "n", "Return True if n is greater than zero, else False.", lambda n: n > 0,
             ((5,), (-2,), (0,))),
    CodeTask("is_divisible", "a, b", "Return True if a is divisible by b, else False.", lambda a, b: a % b == 0,
             ((10, 5), (7, 2), (9, 3))),
    CodeTask("sum_list", "items", "Return the sum of the numbers in the list items.", sum,
             (([1, 2, 3],), ([],), ([-4, 10],))),
    CodeTask("product_list", "items", "Return the product of the numbers in the list items.",
             lambda items: _product(items), (([1, 2, 3, 4],), ([5],), ([2, -3],))),
    CodeTask("max_of_list", "items", "Return the largest number in the list items.", max,
             (([3, 9, 2],), ([-5, -1],), ([7],))),
    CodeTask("min_of_list", "items", "Return the smallest number in the list items.", min,
             (([3, 9, 2],), ([-5, -1],), ([7],))),
    CodeTask("average", "items", "Return the average of the numbers in the list items.",
             lambda items: sum(items) / len(items), (([1, 2, 3, 4],), ([5],), ([2, 7],))),
    CodeTask("list_length", "items", "Return the number of elements in the list items.", len,
             (([1, 2, 3],), ([],), (["a"],))),
    CodeTask("first_item", "items", "Return the first element of the list items.", lambda items: items[0],
             (([4, 5, 6],), (["x"],))),
    CodeTask("last_item", "items", "Return the last element of the list items.", lambda items: items[-1],
             (([4, 5, 6],), (["x"],))),
    CodeTask("second_item", "items", "Return the second element of the list items.", lambda items: items[1],
             (([4, 5, 6],), (["x", "y"],))),
    CodeTask("reverse_list", "items", "Return a new list with the elements of items in reverse order.",
             lambda items: items[::-1], (([1, 2, 3],), ([],), (["a", "b"],))),
    CodeTask("sort_list", "items", "Return a new list with the numbers of items sorted in increasing order.",
             sorted, (([3, 1, 2],), ([],), ([5, -1, 5],))),
    CodeTask("double_all", "items", "Return a list with every number of items doubled.",
             lambda items: [2 * item for item in items], (([1, 2, 3],), ([],), ([-4],))),
    CodeTask("square_all", "items", "Return a list with the square of every number of items.",
             lambda items: [item * item for item in items], (([1, 2, 3],), ([],), ([-4],))),
    CodeTask("even_numbers", "items", "Return a list of the even numbers in items, in order.",
             lambda items: [item for item in items if item % 2 == 0], (([1, 2, 3, 4],), ([],), ([5, 7],))),
    CodeTask("sum_of_squares", "items", "Return the sum of the squares of the numbers in items.",
             lambda items: sum(item * item for item in items), (([1, 2, 3],), ([],), ([-2],))),
    CodeTask("contains", "items, x", "Return True if x is in the list items, else False.",
             lambda items, x: x in items, (([1, 2, 3], 2), ([1, 2, 3], 5), ([], 1))),
    CodeTask("count_occurrences", "items, x", "Return how many times x appears in the list items.",
             lambda items, x: items.count(x), (([1, 2, 1, 1], 1), ([1, 2, 3], 5), ([], 1))),
    CodeTask("is_empty", "items", "Return True if the list items is empty, else False.",
             lambda items: not items, (([],), ([1],))),
    CodeTask("unique_sorted", "items", "Return a sorted list of the distinct elements of items.",
             lambda items: sorted(set(items)), (([3, 1, 3, 2],), ([],), ([5, 5],))),
    CodeTask("string_length", "s", "Return the number of characters in the string s.", len,
             (("hello",), ("",), ("a b",))),
    CodeTask("to_upper", "s", "Return the string s in upper case.", str.upper, (("hello",), ("MiXed 1",))),
    CodeTask("to_lower", "s", "Return the string s in lower case.", str.lower, (("HELLO",), ("MiXed 1",))),
    CodeTask("first_char", "s", "Return the first character of the string s.", lambda s: s[0],
             (("hello",), ("x",))),
    CodeTask("last_char", "s", "Return the last character of the string s.", lambda s: s[-1],
             (("hello",), ("x",))),
    CodeTask("count_vowels", "s", "Return the number of vowels (a, e, i, o, u) in the lower-case string s.",
             lambda s: sum(character in "aeiou" for character in s), (("hello",), ("sky",), ("aeiou",))),
    CodeTask("is_palindrome", "s", "Return True if the string s reads the same backwards, else False.",
             lambda s: s == s[::-1], (("racecar",), ("hello",), ("",))),
    CodeTask("count_words", "s", "Return the number of words in the string s, separated by spaces.",
             lambda s: len(s.split()), (("hello world",), ("one",), ("a b c d",))),
    CodeTask("remove_spaces", "s", "Return the string s without its spaces.", lambda s: s.replace(" ", ""),
             (("a b c",), ("none",), (" x ",))),
    CodeTask("repeat_string", "s, n", "Return the string s repeated n times.", lambda s, n: s * n,
             (("ab", 3), ("x", 0), ("hi", 1))),
    CodeTask("concatenate", "a, b", "Return the string a followed by the string b.", lambda a, b: a + b,
             (("foo", "bar"), ("", "x"))),
    CodeTask("count_char", "s, c", "Return how many times the character c appears in the string s.",
             lambda s, c: s.count(c), (("banana", "a"), ("hello", "z"), ("", "a"))),
    CodeTask("join_words", "words", "Return the words of the list words joined by single spaces.",
             lambda words: " ".join(words), ((["hello", "world"],), (["one"],), ([],))),
    CodeTask("factorial", "n", "Return n factorial, the product of the numbers from 1 to n.",
             lambda n: _product(range(1, n + 1)), ((0,), (1,), (5,))),
    CodeTask("sum_to_n", "n", "Return the sum of the numbers from 1 to n.", lambda n: n * (n + 1) // 2,
             ((1,), (4,), (10,))),
    CodeTask("fibonacci", "n", "Return the n-th Fibonacci number, where fibonacci(0) is 0 and fibonacci(1) is 1.",
             lambda n: _fibonacci(n), ((0,), (1,), (7,), (10,))),
    CodeTask("gcd", "a, b", "Return the greatest common divisor of the positive integers a and b.",
             lambda a, b: _gcd(a, b), ((12, 18), (7, 5), (9, 3))),
    CodeTask("power", "base, exponent", "Return base raised to the power exponent.", pow,
             ((2, 3), (5, 0), (3, 2))),
    CodeTask("celsius_to_fahrenheit", "c", "Convert the temperature c from degrees Celsius to Fahrenheit.",
             lambda c: c * 9 / 5 + 32, ((0,), (100,), (-40,))),
    CodeTask("is_leap_year", "year", "Return True if year is a leap year in the Gregorian calendar, else False.",
             lambda year: year % 4 == 0 and (year % 100 != 0 or year % 400 == 0),
             ((2024,), (1900,), (2000,), (2023,))),
)


def _product(numbers) -> int:
    result = 1
    for number in numbers:
        result *= number
    return result


def _fibonacci(n: int) -> int:
    previous, current = 0, 1
    for _ in range(n):
        previous, current = current, previous + current
    return previous


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def code_items() -> list[SuiteItem]:
    shots = "\n\n".join(CODE_SHOTS) + "\n\n"
    return [SuiteItem("code", "function", f"function:{task.name}", shots + task.header,
                      f"{task.header}\n    ... ({len(task.inputs)} test cases)", CODE_STOP, CODE_MAX_TOKENS,
                      partial(check_code, task.header, task.name, task.cases()))
            for task in CODE_TASKS]


def suite() -> list[SuiteItem]:
    """Every item of the four categories, in a fixed order."""
    items = [*arithmetic_items(), *fact_items(), *code_items(), *instruction_items()]
    keys = [item.key for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("two items share a key")
    return items
