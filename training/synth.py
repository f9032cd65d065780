# ruff: noqa: E501  (the sentence banks below are prose data; one sentence per line reads and diffs best)
"""Synthetic news articles with known dimension scores, for the demo filters, tests and `make demo`.

Every article is built from latent *facets* (wellbeing, evidence, reach, durability, climate impact,
deployment readiness), each 0-10. A facet's value picks the sentence that expresses it, graded in five
steps, so the text determines the scores; the "oracle" labels are the latent values plus noise, rounded
like an LLM's integer scores. Topics shift the facet distributions (crime stories rarely help anyone,
climate-technology stories carry climate impact), languages change every word, and commerce items
(listings, deals, affiliate roundups, sponsored posts) score low on everything. A few articles are
syndicated near-copies of others, as real feeds have.

Labels are written in the two layouts the loaders accept: ``demo_analysis`` (dimension ->
{score, evidence}) and ``demo_tech_analysis`` (dimension -> number). Ground truth that a model must not
see (topic, commerce flag, latent values) lives under ``truth``; :func:`strip_labels` removes both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

FACETS = ("wellbeing", "evidence", "reach", "durability", "climate", "readiness")
LANGUAGES = ("en", "nl", "de", "fr", "es")
TOPICS = ("community_health", "climate_tech", "energy", "finance", "culture", "crime", "sports", "science")

# filter -> dimension -> facet weights. Dimensions that mix facets make the mapping from text to score
# less trivial than one sentence per dimension.
FILTER_DIMENSIONS: dict[str, dict[str, dict[str, float]]] = {
    "demo": {
        "wellbeing": {"wellbeing": 1.0},
        "evidence": {"evidence": 1.0},
        "reach": {"reach": 1.0},
        "durability": {"durability": 1.0},
    },
    "demo_tech": {
        "climate_impact": {"climate": 1.0},
        "technical_credibility": {"evidence": 0.6, "readiness": 0.4},
        "deployment_readiness": {"readiness": 1.0},
    },
}

# topic -> facet -> (mean, sd) of the latent value before clipping to 0-10.
_PRIORS: dict[str, dict[str, tuple[float, float]]] = {
    "community_health": {"wellbeing": (6.0, 2.5), "evidence": (5.0, 2.7), "reach": (4.5, 2.5),
                         "durability": (5.0, 2.6), "climate": (0.4, 0.6), "readiness": (4.5, 2.5)},
    "climate_tech": {"wellbeing": (4.0, 2.2), "evidence": (5.0, 2.7), "reach": (5.0, 2.5),
                     "durability": (5.0, 2.5), "climate": (6.0, 2.6), "readiness": (5.0, 2.8)},
    "energy": {"wellbeing": (3.5, 2.0), "evidence": (5.0, 2.5), "reach": (5.5, 2.5),
               "durability": (5.0, 2.5), "climate": (5.0, 2.7), "readiness": (6.0, 2.5)},
    "finance": {"wellbeing": (2.0, 1.5), "evidence": (5.0, 2.5), "reach": (4.0, 2.2),
                "durability": (3.0, 2.0), "climate": (1.0, 1.2), "readiness": (5.0, 2.2)},
    "culture": {"wellbeing": (4.5, 2.2), "evidence": (3.5, 2.2), "reach": (3.0, 2.0),
                "durability": (3.5, 2.2), "climate": (0.3, 0.5), "readiness": (3.0, 2.0)},
    "crime": {"wellbeing": (1.0, 1.2), "evidence": (4.0, 2.3), "reach": (2.5, 2.0),
              "durability": (2.0, 1.6), "climate": (0.2, 0.4), "readiness": (2.0, 1.5)},
    "sports": {"wellbeing": (3.0, 2.0), "evidence": (3.0, 2.0), "reach": (3.5, 2.2),
               "durability": (2.0, 1.6), "climate": (0.3, 0.5), "readiness": (2.0, 1.5)},
    "science": {"wellbeing": (4.0, 2.5), "evidence": (6.5, 2.2), "reach": (4.0, 2.5),
                "durability": (5.5, 2.5), "climate": (2.5, 2.5), "readiness": (3.0, 2.2)},
}

_CLIMATE_TOPICS = frozenset({"climate_tech", "energy", "science"})

# Facet sentences: language -> facet -> five graded levels (0-2, 2-4, 4-6, 6-8, 8-10), each a list of
# variants. Slots: {city} {n} {pct} {years} {k} {journal} {kt}.
_FACET_TEXT: dict[str, dict[str, list[list[str]]]] = {
    "en": {
        "wellbeing": [
            ["The change brings no benefit to anyone's daily life, and several residents say it has made things worse.",
             "Nobody is better off for it; if anything, people in {city} complain about extra costs and stress."],
            ["Any improvement for residents is marginal, and most people will notice little difference.",
             "A few people may save a little time, but daily life stays much the same."],
            ["Residents report modest improvements, such as slightly shorter waiting times and somewhat lower bills.",
             "Participants say things got a bit easier, with {pct}% reporting a small improvement in their routine."],
            ["Families say their lives have clearly improved, with {pct}% reporting better health and less stress.",
             "People describe real relief: fewer sick days, safer streets and more time with their children."],
            ["Participants call it life-changing: chronic illness fell sharply, children are thriving and {pct}% say they feel healthier and safer than ever.",
             "For thousands of families it has transformed daily life, lifting people out of hardship and saving lives."],
        ],
        "evidence": [
            ["The claims rest on a single anonymous social media post that nobody has been able to verify.",
             "No source is given, and the figures appear to be rumours passed on by word of mouth."],
            ["The organisers cite anecdotes and a press release, but no data has been published.",
             "Supporters point to a handful of testimonials; the results have not been measured."],
            ["An internal survey of {n} people points in the same direction, although it has not been independently checked.",
             "Figures from the organisers, covering {n} cases, suggest an effect, but outside experts have not reviewed them."],
            ["An independent evaluation with a control group of {n} participants confirmed the results, and the data is public.",
             "Auditors from the national statistics office measured the outcomes across {n} households and confirmed them."],
            ["A peer-reviewed randomised controlled trial with {n} participants, replicated in {k} further countries and published in {journal}, found the effect with high confidence.",
             "Several independent peer-reviewed studies, including a large randomised trial published in {journal}, consistently confirm the measured effect."],
        ],
        "reach": [
            ["Only a handful of people on a single street are affected.",
             "It concerns one family and a few of their neighbours."],
            ["The effect is limited to a few hundred residents of one neighbourhood in {city}.",
             "Around one school and its {n} pupils in {city} are involved."],
            ["Around {n} people across the city of {city} are affected.",
             "The whole municipality of {city}, some {n} inhabitants, is covered."],
            ["The scheme now covers several regions, reaching roughly {k} million people nationwide.",
             "It is being rolled out across the country and already reaches millions of households."],
            ["The approach has been adopted in {k} countries and reaches more than {k}00 million people worldwide.",
             "Used on every continent, it now reaches hundreds of millions of people around the globe."],
        ],
        "durability": [
            ["It was a one-day event, and nothing is planned once it ends.",
             "The initiative ended the same afternoon and will not return."],
            ["The funding runs out in a few weeks, and there is no plan to continue.",
             "It depends on a single donation that has already been spent."],
            ["The project has a budget for the next two years, after which its future is uncertain.",
             "A temporary grant keeps it going for now; renewal will be decided next year."],
            ["The change is written into municipal regulations with a budget secured for the next {years} years.",
             "A permanent team has been hired and the service is funded through the regular budget for {years} years."],
            ["The reform is permanently anchored in national law with long-term funding, built to last for generations.",
             "Enshrined in the constitution and financed by an endowment, the change is designed to be permanent."],
        ],
        "climate": [
            [],
            ["The climate effect is negligible, saving at most a few tonnes of CO2 a year.",
             "Its effect on emissions is too small to measure."],
            ["It could trim local emissions by a few percent, roughly {kt} hundred tonnes of CO2 a year.",
             "The city expects a small cut in its carbon footprint, mainly from lower fuel use."],
            ["Engineers estimate it will avoid around {kt} thousand tonnes of CO2 every year, a significant cut for the region.",
             "The installation replaces coal-fired heat and is expected to halve the region's industrial emissions."],
            ["At scale it could avoid hundreds of millions of tonnes of CO2 a year, a major contribution to decarbonising heavy industry worldwide.",
             "Analysts call it one of the largest emission cuts possible this decade, able to eliminate gigatonnes of CO2 globally."],
        ],
        "readiness": [
            ["For now it is only an idea sketched on paper, with no prototype.",
             "The concept exists only as a proposal; nothing has been built."],
            ["Researchers have a first laboratory prototype that works under controlled conditions.",
             "A bench-scale model has been tested in the lab, far from real-world use."],
            ["A pilot installation has been running for several months to test the concept in the field.",
             "A demonstration project with {n} users is testing whether it works outside the lab."],
            ["The first commercial units are being installed for paying customers, and production is scaling up.",
             "After successful trials, the company has signed contracts and begun commercial deliveries."],
            ["It is already in mass production and deployed at thousands of sites, fully commercial and profitable.",
             "Mature and widely deployed, the technology is sold by several manufacturers at competitive prices."],
        ],
    },
    "nl": {
        "wellbeing": [["De verandering levert niemand iets op in het dagelijks leven, en sommige bewoners zeggen dat het erger is geworden."],
                      ["De verbetering voor bewoners is marginaal; de meeste mensen merken er weinig van."],
                      ["Bewoners melden bescheiden verbeteringen, zoals iets kortere wachttijden en wat lagere rekeningen."],
                      ["Gezinnen zeggen dat hun leven duidelijk beter is geworden: {pct}% meldt een betere gezondheid en minder stress."],
                      ["Deelnemers noemen het levensveranderend: chronische ziekte daalde sterk, kinderen bloeien op en {pct}% voelt zich gezonder en veiliger dan ooit."]],
        "evidence": [["De beweringen berusten op één anoniem bericht op sociale media dat niemand heeft kunnen controleren."],
                     ["De organisatoren verwijzen naar anekdotes en een persbericht, maar er zijn geen gegevens gepubliceerd."],
                     ["Een interne enquête onder {n} mensen wijst dezelfde kant op, maar is niet onafhankelijk gecontroleerd."],
                     ["Een onafhankelijke evaluatie met een controlegroep van {n} deelnemers bevestigde de resultaten; de gegevens zijn openbaar."],
                     ["Een door vakgenoten beoordeelde gerandomiseerde studie met {n} deelnemers, herhaald in {k} andere landen en gepubliceerd in {journal}, vond het effect met grote zekerheid."]],
        "reach": [["Het gaat om een handvol mensen in één straat."],
                  ["Het effect blijft beperkt tot enkele honderden bewoners van één wijk in {city}."],
                  ["Ongeveer {n} mensen in de hele stad {city} hebben ermee te maken."],
                  ["De regeling beslaat inmiddels meerdere regio's en bereikt landelijk zo'n {k} miljoen mensen."],
                  ["De aanpak is overgenomen in {k} landen en bereikt wereldwijd meer dan {k}00 miljoen mensen."]],
        "durability": [["Het was een eendaags evenement en daarna is er niets gepland."],
                       ["Het geld is over een paar weken op en er is geen plan om door te gaan."],
                       ["Het project heeft budget voor de komende twee jaar; daarna is de toekomst onzeker."],
                       ["De verandering is vastgelegd in gemeentelijke regels, met budget voor de komende {years} jaar."],
                       ["De hervorming is blijvend verankerd in de landelijke wet met structurele financiering, gebouwd voor generaties."]],
        "climate": [[],
                    ["Het klimaateffect is verwaarloosbaar: hooguit een paar ton CO2 per jaar."],
                    ["Het kan de lokale uitstoot met enkele procenten verlagen, ongeveer {kt} honderd ton CO2 per jaar."],
                    ["Ingenieurs schatten dat het jaarlijks zo'n {kt} duizend ton CO2 voorkomt, een flinke besparing voor de regio."],
                    ["Op grote schaal kan het honderden miljoenen tonnen CO2 per jaar voorkomen, een grote bijdrage aan het verduurzamen van de zware industrie wereldwijd."]],
        "readiness": [["Voorlopig is het alleen een idee op papier, zonder prototype."],
                      ["Onderzoekers hebben een eerste laboratoriumprototype dat werkt onder gecontroleerde omstandigheden."],
                      ["Een proefinstallatie draait al enkele maanden om het concept in de praktijk te testen."],
                      ["De eerste commerciële installaties worden geplaatst bij betalende klanten en de productie wordt opgeschaald."],
                      ["Het wordt al in massaproductie gemaakt en op duizenden locaties gebruikt, volledig commercieel en winstgevend."]],
    },
    "de": {
        "wellbeing": [["Die Veränderung bringt niemandem im Alltag etwas, und einige Anwohner sagen, es sei schlimmer geworden."],
                      ["Die Verbesserung für die Bewohner ist gering; die meisten merken kaum einen Unterschied."],
                      ["Anwohner berichten von bescheidenen Verbesserungen, etwa etwas kürzeren Wartezeiten und niedrigeren Rechnungen."],
                      ["Familien sagen, ihr Leben sei deutlich besser geworden: {pct}% berichten von besserer Gesundheit und weniger Stress."],
                      ["Teilnehmende nennen es lebensverändernd: chronische Krankheiten gingen stark zurück, Kinder blühen auf und {pct}% fühlen sich gesünder und sicherer als je zuvor."]],
        "evidence": [["Die Behauptungen stützen sich auf einen einzigen anonymen Beitrag in sozialen Medien, den niemand überprüfen konnte."],
                     ["Die Veranstalter verweisen auf Anekdoten und eine Pressemitteilung, Daten wurden nicht veröffentlicht."],
                     ["Eine interne Umfrage unter {n} Personen deutet in dieselbe Richtung, wurde aber nicht unabhängig geprüft."],
                     ["Eine unabhängige Evaluation mit einer Kontrollgruppe von {n} Teilnehmenden bestätigte die Ergebnisse; die Daten sind öffentlich."],
                     ["Eine begutachtete randomisierte kontrollierte Studie mit {n} Teilnehmenden, in {k} weiteren Ländern wiederholt und in {journal} veröffentlicht, fand den Effekt mit hoher Sicherheit."]],
        "reach": [["Betroffen ist nur eine Handvoll Menschen in einer einzigen Straße."],
                  ["Der Effekt beschränkt sich auf einige hundert Bewohner eines Viertels in {city}."],
                  ["Rund {n} Menschen in der ganzen Stadt {city} sind betroffen."],
                  ["Das Programm umfasst inzwischen mehrere Regionen und erreicht bundesweit etwa {k} Millionen Menschen."],
                  ["Der Ansatz wurde in {k} Ländern übernommen und erreicht weltweit mehr als {k}00 Millionen Menschen."]],
        "durability": [["Es war eine eintägige Veranstaltung, danach ist nichts geplant."],
                       ["Das Geld ist in wenigen Wochen aufgebraucht, eine Fortsetzung ist nicht vorgesehen."],
                       ["Das Projekt hat ein Budget für die nächsten zwei Jahre, danach ist seine Zukunft ungewiss."],
                       ["Die Änderung ist in der kommunalen Satzung verankert, mit gesichertem Budget für die nächsten {years} Jahre."],
                       ["Die Reform ist dauerhaft im Bundesgesetz verankert und langfristig finanziert, gebaut für Generationen."]],
        "climate": [[],
                    ["Der Klimaeffekt ist vernachlässigbar, höchstens ein paar Tonnen CO2 im Jahr."],
                    ["Es könnte die lokalen Emissionen um einige Prozent senken, etwa {kt} hundert Tonnen CO2 pro Jahr."],
                    ["Ingenieure schätzen, dass jährlich rund {kt} tausend Tonnen CO2 vermieden werden, eine deutliche Senkung für die Region."],
                    ["Im großen Maßstab könnte es Hunderte Millionen Tonnen CO2 pro Jahr vermeiden, ein wichtiger Beitrag zur Dekarbonisierung der Schwerindustrie weltweit."]],
        "readiness": [["Bisher ist es nur eine Idee auf dem Papier, ohne Prototyp."],
                      ["Forschende haben einen ersten Laborprototyp, der unter kontrollierten Bedingungen funktioniert."],
                      ["Eine Pilotanlage läuft seit einigen Monaten, um das Konzept im Feld zu testen."],
                      ["Die ersten kommerziellen Anlagen werden bei zahlenden Kunden installiert, die Produktion wird hochgefahren."],
                      ["Es wird bereits in Serie gefertigt und an Tausenden Standorten eingesetzt, voll kommerziell und profitabel."]],
    },
    "fr": {
        "wellbeing": [["Le changement n'apporte rien à personne au quotidien, et plusieurs habitants disent que la situation s'est aggravée."],
                      ["L'amélioration pour les habitants est marginale ; la plupart ne verront guère de différence."],
                      ["Les habitants signalent des améliorations modestes, comme des délais d'attente un peu plus courts et des factures un peu plus basses."],
                      ["Les familles disent que leur vie s'est nettement améliorée : {pct}% font état d'une meilleure santé et de moins de stress."],
                      ["Les participants parlent d'un changement de vie : les maladies chroniques ont fortement reculé, les enfants s'épanouissent et {pct}% se sentent plus en forme et plus en sécurité que jamais."]],
        "evidence": [["Les affirmations reposent sur un seul message anonyme sur les réseaux sociaux que personne n'a pu vérifier."],
                     ["Les organisateurs citent des anecdotes et un communiqué de presse, mais aucune donnée n'a été publiée."],
                     ["Une enquête interne auprès de {n} personnes va dans le même sens, mais elle n'a pas été vérifiée de façon indépendante."],
                     ["Une évaluation indépendante avec un groupe témoin de {n} participants a confirmé les résultats, et les données sont publiques."],
                     ["Un essai contrôlé randomisé évalué par des pairs, mené auprès de {n} participants, reproduit dans {k} autres pays et publié dans {journal}, a établi l'effet avec une grande certitude."]],
        "reach": [["Seule une poignée de personnes dans une seule rue est concernée."],
                  ["L'effet se limite à quelques centaines d'habitants d'un quartier de {city}."],
                  ["Environ {n} personnes dans toute la ville de {city} sont concernées."],
                  ["Le dispositif couvre désormais plusieurs régions et touche environ {k} millions de personnes dans tout le pays."],
                  ["L'approche a été adoptée dans {k} pays et touche plus de {k}00 millions de personnes dans le monde."]],
        "durability": [["C'était un événement d'une journée, et rien n'est prévu ensuite."],
                       ["Le financement s'épuise dans quelques semaines et rien n'est prévu pour la suite."],
                       ["Le projet dispose d'un budget pour les deux prochaines années ; son avenir est ensuite incertain."],
                       ["Le changement est inscrit dans le règlement municipal, avec un budget garanti pour les {years} prochaines années."],
                       ["La réforme est inscrite durablement dans la loi nationale avec un financement à long terme, conçue pour durer des générations."]],
        "climate": [[],
                    ["L'effet sur le climat est négligeable : quelques tonnes de CO2 par an tout au plus."],
                    ["Il pourrait réduire les émissions locales de quelques pour cent, soit environ {kt} centaines de tonnes de CO2 par an."],
                    ["Les ingénieurs estiment qu'il évitera environ {kt} milliers de tonnes de CO2 chaque année, une baisse importante pour la région."],
                    ["À grande échelle, il pourrait éviter des centaines de millions de tonnes de CO2 par an, une contribution majeure à la décarbonation de l'industrie lourde mondiale."]],
        "readiness": [["Pour l'instant, ce n'est qu'une idée sur le papier, sans prototype."],
                      ["Des chercheurs disposent d'un premier prototype de laboratoire qui fonctionne dans des conditions contrôlées."],
                      ["Une installation pilote fonctionne depuis plusieurs mois pour tester le concept sur le terrain."],
                      ["Les premières unités commerciales sont installées chez des clients payants et la production monte en puissance."],
                      ["Il est déjà produit en série et déployé sur des milliers de sites, pleinement commercial et rentable."]],
    },
    "es": {
        "wellbeing": [["El cambio no aporta nada a la vida diaria de nadie, y varios vecinos dicen que las cosas han empeorado."],
                      ["La mejora para los vecinos es marginal; la mayoría apenas notará diferencia."],
                      ["Los vecinos señalan mejoras modestas, como esperas algo más cortas y facturas algo más bajas."],
                      ["Las familias dicen que su vida ha mejorado claramente: el {pct}% declara mejor salud y menos estrés."],
                      ["Los participantes hablan de un cambio de vida: las enfermedades crónicas cayeron con fuerza, los niños prosperan y el {pct}% se siente más sano y seguro que nunca."]],
        "evidence": [["Las afirmaciones se basan en una única publicación anónima en redes sociales que nadie ha podido verificar."],
                     ["Los organizadores citan anécdotas y un comunicado de prensa, pero no se han publicado datos."],
                     ["Una encuesta interna a {n} personas apunta en la misma dirección, aunque no ha sido verificada de forma independiente."],
                     ["Una evaluación independiente con un grupo de control de {n} participantes confirmó los resultados, y los datos son públicos."],
                     ["Un ensayo controlado aleatorizado revisado por pares con {n} participantes, replicado en otros {k} países y publicado en {journal}, halló el efecto con gran certeza."]],
        "reach": [["Solo afecta a un puñado de personas de una sola calle."],
                  ["El efecto se limita a unos cientos de vecinos de un barrio de {city}."],
                  ["Unas {n} personas de toda la ciudad de {city} se ven afectadas."],
                  ["El programa cubre ya varias regiones y llega a unos {k} millones de personas en todo el país."],
                  ["El enfoque se ha adoptado en {k} países y llega a más de {k}00 millones de personas en todo el mundo."]],
        "durability": [["Fue un evento de un solo día y no hay nada previsto después."],
                       ["La financiación se agota en unas semanas y no hay planes de continuar."],
                       ["El proyecto tiene presupuesto para los próximos dos años; después, su futuro es incierto."],
                       ["El cambio está recogido en la normativa municipal, con presupuesto asegurado para los próximos {years} años."],
                       ["La reforma está anclada de forma permanente en la ley nacional con financiación a largo plazo, pensada para durar generaciones."]],
        "climate": [[],
                    ["El efecto climático es insignificante: unas pocas toneladas de CO2 al año como mucho."],
                    ["Podría recortar las emisiones locales unos pocos puntos, unas {kt} centenas de toneladas de CO2 al año."],
                    ["Los ingenieros calculan que evitará unas {kt} mil toneladas de CO2 cada año, un recorte importante para la región."],
                    ["A gran escala podría evitar cientos de millones de toneladas de CO2 al año, una contribución clave a la descarbonización de la industria pesada mundial."]],
        "readiness": [["Por ahora es solo una idea sobre el papel, sin prototipo."],
                      ["Los investigadores tienen un primer prototipo de laboratorio que funciona en condiciones controladas."],
                      ["Una instalación piloto lleva varios meses funcionando para probar el concepto sobre el terreno."],
                      ["Las primeras unidades comerciales se están instalando para clientes de pago y la producción se está ampliando."],
                      ["Ya se fabrica en serie y está desplegado en miles de emplazamientos, plenamente comercial y rentable."]],
    },
}

# language -> topic -> subjects (noun phrases the headline and lead talk about).
_SUBJECTS: dict[str, dict[str, list[str]]] = {
    "en": {"community_health": ["a neighbourhood health clinic", "a free school meals programme", "a mental health helpline"],
           "climate_tech": ["a carbon capture plant", "a green hydrogen electrolyser", "a low-carbon cement process"],
           "energy": ["a community solar cooperative", "a district heating network", "a grid battery project"],
           "finance": ["a quarterly earnings report", "a bond issue by the regional bank", "a merger of two insurers"],
           "culture": ["a street art festival", "a new public library", "a travelling theatre company"],
           "crime": ["a string of bicycle thefts", "a fraud case at a local firm", "a burglary investigation"],
           "sports": ["the local football club's season", "a city marathon", "a youth swimming league"],
           "science": ["a new study on sleep and memory", "a telescope observation campaign", "research into soil bacteria"]},
    "nl": {"community_health": ["een gezondheidscentrum in de wijk", "een gratis schoolmaaltijdprogramma", "een hulplijn voor mentale gezondheid"],
           "climate_tech": ["een installatie voor CO2-afvang", "een elektrolyser voor groene waterstof", "een koolstofarm cementproces"],
           "energy": ["een zonne-energiecoöperatie", "een warmtenet", "een batterijproject voor het stroomnet"],
           "finance": ["een kwartaalcijfer van een beursfonds", "een obligatie-uitgifte van de regionale bank", "een fusie van twee verzekeraars"],
           "culture": ["een straatkunstfestival", "een nieuwe openbare bibliotheek", "een reizend theatergezelschap"],
           "crime": ["een reeks fietsdiefstallen", "een fraudezaak bij een lokaal bedrijf", "een inbraakonderzoek"],
           "sports": ["het seizoen van de plaatselijke voetbalclub", "een stadsmarathon", "een zwemcompetitie voor de jeugd"],
           "science": ["een nieuwe studie naar slaap en geheugen", "een waarneemcampagne met een telescoop", "onderzoek naar bodembacteriën"]},
    "de": {"community_health": ["ein Gesundheitszentrum im Viertel", "ein kostenloses Schulessen-Programm", "eine Hotline für psychische Gesundheit"],
           "climate_tech": ["eine Anlage zur CO2-Abscheidung", "ein Elektrolyseur für grünen Wasserstoff", "ein kohlenstoffarmes Zementverfahren"],
           "energy": ["eine Solargenossenschaft", "ein Fernwärmenetz", "ein Netzspeicher-Projekt"],
           "finance": ["ein Quartalsbericht eines Konzerns", "eine Anleihe der Regionalbank", "eine Fusion zweier Versicherer"],
           "culture": ["ein Straßenkunstfestival", "eine neue öffentliche Bibliothek", "ein Tourneetheater"],
           "crime": ["eine Serie von Fahrraddiebstählen", "ein Betrugsfall bei einer örtlichen Firma", "Ermittlungen nach einem Einbruch"],
           "sports": ["die Saison des örtlichen Fußballvereins", "ein Stadtmarathon", "eine Schwimmliga für Jugendliche"],
           "science": ["eine neue Studie über Schlaf und Gedächtnis", "eine Beobachtungskampagne mit einem Teleskop", "Forschung zu Bodenbakterien"]},
    "fr": {"community_health": ["un centre de santé de quartier", "un programme de repas scolaires gratuits", "une ligne d'écoute en santé mentale"],
           "climate_tech": ["une usine de captage du carbone", "un électrolyseur d'hydrogène vert", "un procédé de ciment bas carbone"],
           "energy": ["une coopérative solaire citoyenne", "un réseau de chaleur urbain", "un projet de batteries pour le réseau"],
           "finance": ["les résultats trimestriels d'un groupe coté", "une émission obligataire de la banque régionale", "la fusion de deux assureurs"],
           "culture": ["un festival d'art urbain", "une nouvelle bibliothèque publique", "une troupe de théâtre itinérante"],
           "crime": ["une série de vols de vélos", "une affaire de fraude dans une entreprise locale", "une enquête sur un cambriolage"],
           "sports": ["la saison du club de football local", "un marathon urbain", "un championnat de natation pour les jeunes"],
           "science": ["une nouvelle étude sur le sommeil et la mémoire", "une campagne d'observation au télescope", "des recherches sur les bactéries du sol"]},
    "es": {"community_health": ["un centro de salud de barrio", "un programa de comedor escolar gratuito", "una línea de ayuda de salud mental"],
           "climate_tech": ["una planta de captura de carbono", "un electrolizador de hidrógeno verde", "un proceso de cemento bajo en carbono"],
           "energy": ["una cooperativa solar vecinal", "una red de calefacción urbana", "un proyecto de baterías para la red"],
           "finance": ["los resultados trimestrales de una cotizada", "una emisión de bonos del banco regional", "la fusión de dos aseguradoras"],
           "culture": ["un festival de arte urbano", "una nueva biblioteca pública", "una compañía de teatro itinerante"],
           "crime": ["una serie de robos de bicicletas", "un caso de fraude en una empresa local", "una investigación por robo en una vivienda"],
           "sports": ["la temporada del club de fútbol local", "un maratón urbano", "una liga juvenil de natación"],
           "science": ["un nuevo estudio sobre el sueño y la memoria", "una campaña de observación con telescopio", "una investigación sobre bacterias del suelo"]},
}

# language -> (headline templates, lead templates, filler sentences). Slots: {subject} {Subject} {city}
# {person} {org} {weekday}.
_FRAMES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "en": (["{City}: {subject} in the spotlight", "What {subject} means for {city}", "{Subject} draws attention in {city}",
            "Inside {subject} in {city}"],
           ["In {city}, {org} has presented {subject}.", "{Person} of {org} spoke on {weekday} about {subject} in {city}.",
            "Attention in {city} this week turned to {subject}."],
           ["{Person}, who has followed the issue for years, said the coming months will be decisive.",
            "The council is expected to return to the matter after the summer.",
            "Local media first reported the story on {weekday}.",
            "Critics and supporters met at a packed public meeting in the town hall.",
            "Asked for comment, {org} said it would publish more details soon."]),
    "nl": (["{City}: {subject} in de schijnwerpers", "Wat {subject} betekent voor {city}", "{Subject} trekt aandacht in {city}"],
           ["In {city} heeft {org} {subject} gepresenteerd.", "{Person} van {org} sprak op {weekday} over {subject} in {city}."],
           ["{Person}, die het onderwerp al jaren volgt, zegt dat de komende maanden beslissend zijn.",
            "De gemeenteraad komt na de zomer op de kwestie terug.",
            "Lokale media meldden het verhaal voor het eerst op {weekday}.",
            "Voor- en tegenstanders troffen elkaar op een drukbezochte bijeenkomst in het stadhuis."]),
    "de": (["{City}: {subject} im Fokus", "Was {subject} für {city} bedeutet", "{Subject} sorgt in {city} für Aufmerksamkeit"],
           ["In {city} hat {org} {subject} vorgestellt.", "{Person} von {org} sprach am {weekday} über {subject} in {city}."],
           ["{Person}, die das Thema seit Jahren verfolgt, sagt, die kommenden Monate seien entscheidend.",
            "Der Stadtrat will sich nach dem Sommer erneut damit befassen.",
            "Lokale Medien berichteten am {weekday} zuerst darüber.",
            "Befürworter und Kritiker trafen sich bei einer vollen Bürgerversammlung im Rathaus."]),
    "fr": (["{City} : {subject} sous les projecteurs", "Ce que {subject} change pour {city}", "{Subject} fait parler à {city}"],
           ["À {city}, {org} a présenté {subject}.", "{Person}, de {org}, s'est exprimée {weekday} sur {subject} à {city}."],
           ["{Person}, qui suit le dossier depuis des années, estime que les prochains mois seront décisifs.",
            "Le conseil municipal doit revenir sur le sujet après l'été.",
            "La presse locale a révélé l'affaire {weekday}.",
            "Partisans et opposants se sont retrouvés lors d'une réunion publique bondée à la mairie."]),
    "es": (["{City}: {subject} en el punto de mira", "Qué supone {subject} para {city}", "{Subject} atrae la atención en {city}"],
           ["En {city}, {org} ha presentado {subject}.", "{Person}, de {org}, habló el {weekday} sobre {subject} en {city}."],
           ["{Person}, que sigue el asunto desde hace años, cree que los próximos meses serán decisivos.",
            "El ayuntamiento volverá sobre el asunto después del verano.",
            "Los medios locales informaron por primera vez el {weekday}.",
            "Partidarios y críticos se reunieron en una abarrotada asamblea en el ayuntamiento."]),
}

_CITIES = {"en": ["Leeds", "Bristol", "Austin", "Glasgow", "Pune", "Nairobi", "Adelaide"],
           "nl": ["Utrecht", "Groningen", "Zwolle", "Eindhoven", "Gent", "Leuven"],
           "de": ["Leipzig", "Freiburg", "Kassel", "Graz", "Bremen", "Münster"],
           "fr": ["Lyon", "Nantes", "Lille", "Grenoble", "Liège", "Rennes"],
           "es": ["Bilbao", "Valencia", "Zaragoza", "Córdoba", "Rosario", "Málaga"]}
_PEOPLE = {"en": ["Sarah Okafor", "Tom Reilly", "Priya Nair", "James Whitfield"],
           "nl": ["Anouk de Vries", "Joris Bakker", "Fatima El Amrani", "Pieter Jansen"],
           "de": ["Katrin Vogel", "Jonas Albrecht", "Leyla Demir", "Martin Krause"],
           "fr": ["Claire Dubois", "Hugo Lefèvre", "Amina Diallo", "Julien Moreau"],
           "es": ["Lucía Herrera", "Diego Navarro", "Marta Ibáñez", "Javier Ortega"]}
_ORGS = {"en": ["the city council", "a local cooperative", "a university research team", "the regional authority"],
         "nl": ["de gemeente", "een lokale coöperatie", "een onderzoeksgroep van de universiteit", "de provincie"],
         "de": ["die Stadtverwaltung", "eine örtliche Genossenschaft", "ein Forschungsteam der Universität", "der Landkreis"],
         "fr": ["la mairie", "une coopérative locale", "une équipe de recherche universitaire", "la région"],
         "es": ["el ayuntamiento", "una cooperativa local", "un equipo de investigación universitario", "el gobierno regional"]}
_WEEKDAYS = {"en": ["Monday", "Tuesday", "Thursday", "Friday"], "nl": ["maandag", "dinsdag", "donderdag", "vrijdag"],
             "de": ["Montag", "Dienstag", "Donnerstag", "Freitag"], "fr": ["lundi", "mardi", "jeudi", "vendredi"],
             "es": ["lunes", "martes", "jueves", "viernes"]}
_JOURNALS = ["The Lancet", "Nature", "BMJ", "Science", "PLOS Medicine", "Joule"]
_OUTLETS = {"en": ["daily_courier", "metro_herald"], "nl": ["dagblad_noord", "stadsnieuws"],
            "de": ["tagesbote", "stadtanzeiger"], "fr": ["le_quotidien", "journal_ville"],
            "es": ["diario_sur", "noticias_ciudad"]}

# Commerce: language -> kind -> (title, body) templates. Slots: {product} {brand} {price} {old} {pct} {code}.
_COMMERCE: dict[str, dict[str, tuple[str, str]]] = {
    "en": {"listing": ("{brand} {product} – now {price}",
                       "Buy the {brand} {product} today for just {price}. Free shipping on orders over €50, 30-day returns. "
                       "Add to cart now while stocks last. In stock: ships within 24 hours. Customer rating 4.7 out of 5."),
           "deal": ("Deal of the day: {pct}% off the {brand} {product}",
                    "Was {old}, now {price}! Use code {code} at checkout to save an extra 10%. Offer ends midnight. "
                    "Don't miss this limited-time discount – click the link to grab yours."),
           "affiliate": ("The 7 best {product}s of the year, tested",
                         "We tested the most popular {product}s so you don't have to. Our top pick is the {brand}, "
                         "currently {price} at major retailers. We may earn a commission when you buy through links on this page."),
           "sponsored": ("Sponsored: how {brand} makes every morning better",
                         "This article is sponsored by {brand}. Discover the {product} that thousands already love. "
                         "Order now and get a free gift with code {code}. Paid partnership.")},
    "nl": {"listing": ("{brand} {product} – nu {price}",
                       "Koop vandaag de {brand} {product} voor slechts {price}. Gratis verzending vanaf €50, 30 dagen retour. "
                       "Bestel nu, op = op. Voor 23:59 besteld, morgen in huis."),
           "deal": ("Deal van de dag: {pct}% korting op de {brand} {product}",
                    "Van {old} voor {price}! Gebruik kortingscode {code} bij het afrekenen. Actie geldt tot middernacht."),
           "affiliate": ("De 7 beste {product}s van dit jaar, getest",
                         "Wij testten de populairste {product}s. Onze favoriet is de {brand}, nu {price} bij grote winkels. "
                         "Wij ontvangen mogelijk een commissie als je via links op deze pagina koopt."),
           "sponsored": ("Gesponsord: zo maakt {brand} je ochtend beter",
                         "Dit artikel is gesponsord door {brand}. Ontdek de {product} waar duizenden al van houden. "
                         "Bestel nu met code {code} en ontvang een gratis cadeau. Betaalde samenwerking.")},
    "de": {"listing": ("{brand} {product} – jetzt {price}",
                       "Kaufen Sie den {brand} {product} heute für nur {price}. Versandkostenfrei ab 50 €, 30 Tage Rückgaberecht. "
                       "Jetzt in den Warenkorb – nur solange der Vorrat reicht."),
           "deal": ("Angebot des Tages: {pct}% Rabatt auf den {brand} {product}",
                    "Statt {old} nur {price}! Mit dem Gutscheincode {code} sparen Sie zusätzlich 10%. Nur bis Mitternacht."),
           "affiliate": ("Die 7 besten {product} des Jahres im Test",
                         "Wir haben die beliebtesten Modelle getestet. Testsieger ist der {brand} {product}, aktuell {price} im Handel. "
                         "Für Käufe über Links auf dieser Seite erhalten wir eventuell eine Provision."),
           "sponsored": ("Anzeige: Wie {brand} Ihren Morgen besser macht",
                         "Dieser Beitrag ist gesponsert von {brand}. Entdecken Sie den {product}, den Tausende lieben. "
                         "Jetzt bestellen und mit Code {code} ein Geschenk sichern. Bezahlte Partnerschaft.")},
    "fr": {"listing": ("{brand} {product} – maintenant {price}",
                       "Achetez aujourd'hui le {product} {brand} pour seulement {price}. Livraison gratuite dès 50 €, retours sous 30 jours. "
                       "Ajoutez-le au panier avant rupture de stock."),
           "deal": ("Bon plan du jour : -{pct}% sur le {product} {brand}",
                    "Avant {old}, maintenant {price} ! Utilisez le code promo {code} pour 10% de remise en plus. Offre valable jusqu'à minuit."),
           "affiliate": ("Les 7 meilleurs {product} de l'année, testés",
                         "Nous avons testé les modèles les plus populaires. Notre favori est le {brand}, actuellement à {price}. "
                         "Nous pouvons percevoir une commission sur les achats effectués via les liens de cette page."),
           "sponsored": ("Contenu sponsorisé : comment {brand} illumine vos matins",
                         "Cet article est sponsorisé par {brand}. Découvrez le {product} que des milliers de clients adorent. "
                         "Commandez avec le code {code} et recevez un cadeau. Partenariat rémunéré.")},
    "es": {"listing": ("{brand} {product}: ahora {price}",
                       "Compra hoy el {product} {brand} por solo {price}. Envío gratis a partir de 50 €, devolución en 30 días. "
                       "Añádelo al carrito hasta agotar existencias."),
           "deal": ("Oferta del día: {pct}% de descuento en el {product} {brand}",
                    "Antes {old}, ahora {price}. Usa el código {code} al pagar y ahorra un 10% más. La oferta termina a medianoche."),
           "affiliate": ("Los 7 mejores {product} del año, probados",
                         "Hemos probado los modelos más populares. Nuestro favorito es el {brand}, ahora a {price}. "
                         "Podemos recibir una comisión por las compras realizadas a través de los enlaces de esta página."),
           "sponsored": ("Patrocinado: cómo {brand} mejora tus mañanas",
                         "Este artículo está patrocinado por {brand}. Descubre el {product} que ya encanta a miles de personas. "
                         "Pide ahora con el código {code} y llévate un regalo. Colaboración pagada.")},
}
_PRODUCTS = {"en": ["wireless earbuds", "air fryer", "robot vacuum", "smartwatch", "espresso machine", "running shoe"],
             "nl": ["draadloze oordopjes", "airfryer", "robotstofzuiger", "smartwatch", "espressomachine", "hardloopschoen"],
             "de": ["Kopfhörer", "Heißluftfritteuse", "Saugroboter", "Smartwatch", "Espressomaschine", "Laufschuh"],
             "fr": ["écouteurs sans fil", "friteuse sans huile", "aspirateur robot", "montre connectée", "machine à expresso", "chaussure de running"],
             "es": ["auriculares inalámbricos", "freidora de aire", "robot aspirador", "reloj inteligente", "cafetera espresso", "zapatilla de running"]}
_BRANDS = ["Nordvik", "Lumetra", "Soundara", "Kivo", "Bravona", "Zentrix"]

_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
_MONTHS_SPAN_DAYS = 300


def level(value: float) -> int:
    """The graded step (0-4) a 0-10 facet value is written at."""
    return min(4, max(0, int(value // 2)))


def filter_scores(facets: dict[str, float], filter_name: str) -> dict[str, float]:
    """Latent (noise-free) dimension scores of ``filter_name`` for one article's facets."""
    dims = FILTER_DIMENSIONS[filter_name]
    return {dim: float(np.clip(sum(w * facets[f] for f, w in mix.items()), 0.0, 10.0)) for dim, mix in dims.items()}


@dataclass(frozen=True)
class SynthConfig:
    n: int
    seed: int = 0
    languages: tuple[str, ...] = LANGUAGES
    language_weights: tuple[float, ...] | None = (0.5, 0.2, 0.1, 0.1, 0.1)
    commerce_fraction: float = 0.1
    near_duplicate_fraction: float = 0.03
    label_noise: float = 0.6


class _Writer:
    """Builds one article's text from its facets; all randomness from the generator it is given."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def pick(self, items: Sequence[str]) -> str:
        return items[int(self.rng.integers(len(items)))]

    def slots(self, lang: str) -> dict[str, str]:
        r = self.rng
        city, person, org = self.pick(_CITIES[lang]), self.pick(_PEOPLE[lang]), self.pick(_ORGS[lang])
        return {"city": city, "City": city, "person": person, "Person": person, "org": org,
                "weekday": self.pick(_WEEKDAYS[lang]), "journal": self.pick(_JOURNALS),
                "n": f"{int(r.integers(40, 20000)):,}".replace(",", "." if lang != "en" else ","),
                "pct": str(int(r.integers(12, 85))), "years": str(int(r.integers(5, 15))),
                "k": str(int(r.integers(2, 9))), "kt": str(int(r.integers(2, 60)))}

    def article(self, lang: str, topic: str, facets: dict[str, float]) -> tuple[str, str, dict[str, str]]:
        slots = self.slots(lang)
        subject = self.pick(_SUBJECTS[lang][topic])
        slots["subject"], slots["Subject"] = subject, subject[:1].upper() + subject[1:]
        titles, leads, fillers = _FRAMES[lang]
        title = self.pick(titles).format(**slots)
        title = title[:1].upper() + title[1:]
        body = [self.pick(leads).format(**slots)]
        facet_lines = []
        said: dict[str, str] = {}
        for facet in FACETS:
            variants = _FACET_TEXT[lang][facet][level(facets[facet])]
            if variants:
                said[facet] = self.pick(variants).format(**slots)
                facet_lines.append(said[facet])
        order = self.rng.permutation(len(facet_lines))
        n_fill = int(self.rng.integers(1, 4))
        fill = [fillers[i].format(**slots) for i in self.rng.choice(len(fillers), size=n_fill, replace=False)]
        lines = [facet_lines[i] for i in order]
        # Fillers go between facet sentences, so head+tail truncation sometimes cuts a signal: as in real text.
        for line in fill:
            lines.insert(int(self.rng.integers(0, len(lines) + 1)), line)
        paragraphs = [" ".join(body + lines[:2]), " ".join(lines[2:5]), " ".join(lines[5:])]
        return title, "\n\n".join(p for p in paragraphs if p), said

    def commerce(self, lang: str) -> tuple[str, str, str]:
        kind = self.pick(list(_COMMERCE[lang]))
        title_t, body_t = _COMMERCE[lang][kind]
        price = float(self.rng.integers(19, 400)) - 0.01
        pct = int(self.rng.integers(15, 60))
        slots = {"product": self.pick(_PRODUCTS[lang]), "brand": self.pick(_BRANDS), "price": f"€{price:.2f}",
                 "old": f"€{price / (1 - pct / 100):.2f}", "pct": str(pct),
                 "code": f"SAVE{int(self.rng.integers(10, 99))}"}
        return kind, title_t.format(**slots), body_t.format(**slots)


def _noisy(value: float, rng: np.random.Generator, sd: float) -> int:
    return int(np.clip(np.rint(value + rng.normal(0.0, sd)), 0, 10))


def _labels(facets: dict[str, float], rng: np.random.Generator, sd: float,
            said: dict[str, str]) -> dict[str, Any]:
    # The demo layout carries the oracle's evidence quote, as the original system's analyses do.
    demo = {dim: {"score": _noisy(v, rng, sd), "evidence": said.get(dim, "")}
            for dim, v in filter_scores(facets, "demo").items()}
    tech = {dim: _noisy(v, rng, sd) for dim, v in filter_scores(facets, "demo_tech").items()}
    return {"demo_analysis": demo, "demo_tech_analysis": tech}


def _article_id(seed: int, index: int, source: str) -> str:
    digest = hashlib.sha1(f"{seed}:{index}".encode()).hexdigest()[:12]
    return f"{source}_{digest}"


def _near_copy(text: str, rng: np.random.Generator) -> str:
    """A syndicated copy: the same story with a sentence dropped or an update line added."""
    sentences = text.replace("\n\n", " \n\n ").split(". ")
    if len(sentences) > 6 and rng.random() < 0.5:
        del sentences[int(rng.integers(1, len(sentences) - 1))]
    copy = ". ".join(sentences).replace(" \n\n ", "\n\n")
    return copy + "\n\n(Updated with additional reporting.)" if rng.random() < 0.7 else copy


def generate(config: SynthConfig | int, *, seed: int | None = None) -> list[dict[str, Any]]:
    """``config.n`` labelled synthetic articles (a plain ``int`` means that many with defaults)."""
    cfg = SynthConfig(n=config, seed=seed or 0) if isinstance(config, int) else config
    rng = np.random.default_rng(cfg.seed)
    writer = _Writer(rng)
    weights = np.asarray(cfg.language_weights if cfg.language_weights and
                         len(cfg.language_weights) == len(cfg.languages) else [1.0] * len(cfg.languages))
    weights = weights / weights.sum()
    records: list[dict[str, Any]] = []
    originals: list[int] = []
    for i in range(cfg.n):
        lang = str(rng.choice(cfg.languages, p=weights))
        published = _EPOCH + timedelta(seconds=int(rng.integers(0, _MONTHS_SPAN_DAYS * 86400)))
        if originals and rng.random() < cfg.near_duplicate_fraction:
            base = records[originals[int(rng.integers(len(originals)))]]
            src = base["truth"]
            facets = dict(src["latent"])
            outlet = "wire_syndicate"
            record = {**base, "id": _article_id(cfg.seed, i, outlet), "source": outlet,
                      "content": _near_copy(base["content"], rng),
                      "url": f"https://{outlet}.example/{i:06d}",
                      "published_date": (datetime.fromisoformat(base["published_date"])
                                         + timedelta(hours=int(rng.integers(1, 48)))).isoformat()}
            record.update(_labels(facets, rng, cfg.label_noise, {}))
            record["truth"] = {**src, "near_duplicate_of": base["id"]}
            records.append(record)
            continue
        if rng.random() < cfg.commerce_fraction:
            kind, title, content = writer.commerce(lang)
            facets = {f: float(rng.uniform(0.0, 1.5)) for f in FACETS}
            outlet, topic, source_type, is_commerce = f"shop_{kind}", "commerce", "rss", True
            said: dict[str, str] = {}
        else:
            topic = str(rng.choice(TOPICS))
            # One article-level factor moves every facet together: strong stories tend to be strong
            # across the board, which is also what gives the demo filters a HIGH tier to find.
            quality = rng.normal(0.0, 1.4)
            facets = {f: float(np.clip(rng.normal(*_PRIORS[topic][f])
                                       + (quality if f != "climate" or topic in _CLIMATE_TOPICS else 0.0),
                                       0.0, 10.0)) for f in FACETS}
            title, content, said = writer.article(lang, topic, facets)
            outlet, source_type, is_commerce = writer.pick(_OUTLETS[lang]), "rss", False
            kind = None
        article_id = _article_id(cfg.seed, i, outlet)
        record = {
            "id": article_id, "title": title, "content": content, "source": outlet, "source_type": source_type,
            "url": f"https://{outlet}.example/{article_id}", "published_date": published.isoformat(),
            "language": lang, "tags": [topic] if not is_commerce else ["shopping", kind or "listing"],
            "metadata": {"word_count": len(content.split()), "generator": "fluxscore.training.synth"},
        }
        record.update(_labels(facets, rng, cfg.label_noise, said))
        record["truth"] = {"topic": topic, "is_commerce": is_commerce, "commerce_kind": kind,
                           "latent": dict(facets), "near_duplicate_of": None}
        records.append(record)
        originals.append(i)
    return records


LABEL_KEYS = ("demo_analysis", "demo_tech_analysis", "truth")


def strip_labels(record: dict[str, Any]) -> dict[str, Any]:
    """The plain FluxusSource article: labels and ground truth removed."""
    return {k: v for k, v in record.items() if k not in LABEL_KEYS}


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("wb") as fh:
        for record in records:
            fh.write(orjson.dumps(record))
            fh.write(b"\n")
            count += 1
    return count


# --- The commerce detector's own training set ---------------------------------------------------------
# The demo corpus above holds a few commerce kinds in five languages, and its news never mentions a price:
# a classifier trained on it alone learns "a price means commerce" and misses buying guides, deal roundups,
# coupon posts and sponsored posts without prices. This set covers those families in every language the
# commerce rules cover, next to the hard negatives: news that quotes prices (inflation, earnings, a car
# or product launch, sales-season retail figures). Slots: {product} {brand} {price} {old} {pct} {year}
# {n} {code} {company} {amount} {rate} {car}.
COMMERCE_LANGUAGES = ("en", "nl", "de", "fr", "es", "pt", "it", "el")

_COMMERCE_SET: dict[str, dict[str, dict[str, tuple[str, str]]]] = {
    "commerce": {
        "guide": {
            "en": ("The best {product}s for {year}, tested and reviewed",
                   "We spent weeks testing {n} {product}s to find the ones worth buying. Our top pick is the {brand}, "
                   "with the best budget pick close behind. Here is our buying guide, updated for {year}."),
            "nl": ("De beste {product}s van {year}, getest",
                   "We testten {n} {product}s om te zien welke het kopen waard zijn. Onze favoriet is de {brand}. "
                   "In deze koopgids lees je welke het best bij je past."),
            "de": ("Die besten {product} {year} im Test",
                   "Wir haben {n} Modelle ausprobiert. Testsieger ist der {brand}, Preis-Leistungs-Sieger ein "
                   "günstigeres Modell. Unsere Kaufberatung zeigt, welches Gerät zu Ihnen passt."),
            "fr": ("Les meilleurs {product} de {year} : notre sélection",
                   "Nous avons testé {n} modèles pour vous. Notre coup de cœur est le {brand}. Voici notre guide "
                   "d'achat pour choisir le bon modèle cette année."),
            "es": ("Los mejores {product} de {year}: nuestra selección",
                   "Hemos probado {n} modelos. Nuestro favorito es el {brand}, y te contamos cuál tiene la mejor "
                   "relación calidad-precio en esta guía de compra."),
            "pt": ("Qual {product} vale a pena comprar em {year}?",
                   "Testamos {n} modelos para ajudar na escolha. O {brand} é o nosso favorito e tem o melhor "
                   "custo-benefício. Confira o nosso guia de compras."),
            "it": ("I migliori {product} del {year}: quale comprare",
                   "Abbiamo provato {n} modelli. Il nostro preferito è il {brand}, con il miglior rapporto "
                   "qualità-prezzo. Ecco la nostra guida all'acquisto."),
            "el": ("Τα καλύτερα {product} του {year}: ποιο να αγοράσετε",
                   "Δοκιμάσαμε {n} μοντέλα. Το αγαπημένο μας είναι το {brand}. Διαβάστε τον οδηγό αγοράς μας "
                   "για να διαλέξετε σωστά."),
        },
        "roundup": {
            "en": ("{n}+ Black Friday deals you can still get",
                   "The best Black Friday deals are live: the {brand} {product} is {pct} percent off at {price}, "
                   "and dozens more early deals on laptops and headphones are listed below."),
            "nl": ("De {n} beste Black Friday-aanbiedingen op een rij",
                   "De {brand} {product} is nu {pct}% goedkoper en kost {price}. Hieronder vind je de beste deals "
                   "van dit weekend."),
            "de": ("Die besten Black-Friday-Angebote: {n} Schnäppchen",
                   "Der {brand} {product} ist gerade um {pct} % reduziert und kostet {price}. Wir haben die besten "
                   "Deals des Tages für Sie gesammelt."),
            "fr": ("Black Friday : les meilleures offres du jour",
                   "Le {product} {brand} passe à {price}, soit -{pct}%. Voici {n} bons plans à saisir avant "
                   "la fin de la semaine."),
            "es": ("Las mejores ofertas del Black Friday",
                   "El {product} {brand} tiene un descuento del {pct}% y se queda en {price}. Te dejamos {n} "
                   "chollos más que no te puedes perder."),
            "pt": ("Esquenta Black Friday: veja {n} produtos em oferta",
                   "O {product} {brand} está com {pct}% de desconto e sai por {price}. Confira as melhores "
                   "ofertas antes que acabem."),
            "it": ("Black Friday Amazon: le migliori offerte di oggi",
                   "Il {product} {brand} è in super offerta con uno sconto del {pct}%, a {price}. Ecco altre {n} "
                   "offerte imperdibili."),
            "el": ("Black Friday: οι καλύτερες προσφορές της ημέρας",
                   "Το {product} {brand} έχει έκπτωση {pct}% και κοστίζει {price}. Δείτε άλλες {n} προσφορές "
                   "πριν εξαντληθούν."),
        },
        "coupon": {
            "en": ("{brand} promo code: {pct}% off this week",
                   "Use code {code} at checkout to take {pct}% off any {product}. The coupon code works until "
                   "Sunday and stacks with free shipping."),
            "nl": ("Kortingscode {brand}: {pct}% korting",
                   "Met de kortingscode {code} krijg je {pct}% korting op elke {product}. De actiecode is geldig "
                   "tot zondag."),
            "de": ("{brand} Gutscheincode: {pct} % Rabatt",
                   "Mit dem Rabattcode {code} sparen Sie {pct} % auf jeden {product}. Der Gutschein gilt bis "
                   "Sonntag."),
            "fr": ("Code promo {brand} : -{pct}% cette semaine",
                   "Avec le code promo {code}, profitez de {pct} % de réduction sur tous les {product}. Offre "
                   "valable jusqu'à dimanche."),
            "es": ("Cupón {brand}: {pct}% de descuento",
                   "Con el código de descuento {code} ahorras un {pct}% en cualquier {product}. El cupón es "
                   "válido hasta el domingo."),
            "pt": ("Cupom {brand}: {pct}% de desconto",
                   "Use o cupom {code} e ganhe {pct}% de desconto em qualquer {product}. O código promocional "
                   "vale até domingo."),
            "it": ("Codice sconto {brand}: {pct}% su tutto",
                   "Usa il codice {code} per avere il {pct}% di sconto su ogni {product}. Il coupon è valido "
                   "fino a domenica."),
            "el": ("Κωδικός έκπτωσης {brand}: {pct}% σε όλα",
                   "Με το κουπόνι {code} κερδίζετε έκπτωση {pct}% σε κάθε {product}. Ο κωδικός ισχύει έως "
                   "την Κυριακή."),
        },
        "sponsored": {
            "en": ("How {brand} helps small teams work smarter",
                   "Sponsored content. Teams everywhere are rethinking how they work, and {brand} wants to help. "
                   "Discover what its platform can do for you. Sign up today and start your free trial."),
            "nl": ("Zo helpt {brand} kleine teams slimmer werken",
                   "Gesponsorde inhoud. Steeds meer teams kiezen voor {brand}. Ontdek wat het platform voor jou "
                   "kan doen. Meld je nu aan en probeer gratis."),
            "de": ("Wie {brand} kleinen Teams hilft",
                   "Anzeige. Immer mehr Teams setzen auf {brand}. Entdecken Sie, was die Plattform für Sie tun "
                   "kann. Jetzt anmelden und kostenlos testen."),
            "fr": ("Comment {brand} aide les petites équipes",
                   "Contenu sponsorisé. De plus en plus d'équipes choisissent {brand}. Découvrez ce que la "
                   "plateforme peut faire pour vous. Essai gratuit, inscrivez-vous dès aujourd'hui."),
            "es": ("Cómo {brand} ayuda a los equipos pequeños",
                   "Contenido patrocinado. Cada vez más equipos confían en {brand}. Descubre lo que la plataforma "
                   "puede hacer por ti. Regístrate hoy y prueba gratis."),
            "pt": ("Como a {brand} ajuda pequenas equipes",
                   "Conteúdo patrocinado. Cada vez mais equipes escolhem a {brand}. Descubra o que a plataforma "
                   "pode fazer por você. Cadastre-se já e faça um teste grátis."),
            "it": ("Come {brand} aiuta i piccoli team",
                   "Contenuto sponsorizzato. Sempre più team scelgono {brand}. Scopri cosa può fare la piattaforma "
                   "per te. Iscriviti oggi e prova gratis."),
            "el": ("Πώς η {brand} βοηθά τις μικρές ομάδες",
                   "Χορηγούμενο περιεχόμενο. Όλο και περισσότερες ομάδες επιλέγουν την {brand}. Ανακαλύψτε τι "
                   "μπορεί να κάνει για εσάς. Εγγραφείτε σήμερα."),
        },
        "deal": {
            "en": ("The {brand} {product} is {pct} percent off right now",
                   "The {brand} {product} has dropped to {price} at Amazon, down from {old}. That is the lowest "
                   "price we have seen. We may earn a commission from links on this page."),
            "nl": ("{brand} {product} nu {pct}% goedkoper",
                   "De {brand} {product} kost nu {price} in plaats van {old}: de laagste prijs ooit. Dit artikel "
                   "bevat affiliate links."),
            "de": ("{brand} {product} zum Tiefstpreis",
                   "Den {brand} {product} gibt es jetzt für {price} statt {old}. Mit * markierte Links sind "
                   "Partnerlinks."),
            "fr": ("Le {product} {brand} à prix cassé",
                   "Le {product} {brand} passe à {price} au lieu de {old}. Cet article contient des liens affiliés."),
            "es": ("Nunca ha estado tan barato: {product} {brand}",
                   "El {product} {brand} baja a {price}, antes {old}. Podemos recibir una comisión por las compras."),
            "pt": ("{product} {brand} com {pct}% OFF",
                   "O {product} {brand} sai por {price}, antes {old}. Aproveite a promoção! Link de afiliado."),
            "it": ("{product} {brand} al minimo storico",
                   "Il {product} {brand} costa {price} invece di {old}. Potremmo ricevere una commissione dai link."),
            "el": ("{product} {brand} σε χαμηλότερη τιμή",
                   "Το {product} {brand} κοστίζει {price} από {old}. Ενδέχεται να λάβουμε προμήθεια από τους "
                   "συνδέσμους."),
        },
    },
    "news": {
        "inflation": {
            "en": ("Inflation rises to {rate}% as food prices climb",
                   "Consumer prices rose {rate}% from a year earlier, the statistics office said. A loaf of bread "
                   "now costs {price}, up from {old}, and energy bills rose again. Economists expect the central "
                   "bank to keep rates on hold at its next meeting."),
            "nl": ("Inflatie stijgt naar {rate} procent",
                   "De prijzen stegen met {rate} procent, meldt het CBS. Een brood kost nu {price}, vorig jaar was "
                   "dat {old}. Economen verwachten dat de ECB de rente niet verandert."),
            "de": ("Inflation steigt auf {rate} Prozent",
                   "Die Verbraucherpreise stiegen um {rate} Prozent, teilte das Statistische Bundesamt mit. Ein "
                   "Brot kostet nun {price}, im Vorjahr waren es {old}. Ökonomen erwarten keine Zinsänderung."),
            "fr": ("L'inflation remonte à {rate} %",
                   "Les prix à la consommation ont augmenté de {rate} % sur un an, selon l'Insee. La baguette "
                   "coûte désormais {price}, contre {old} l'an dernier."),
            "es": ("La inflación sube al {rate}%",
                   "Los precios subieron un {rate}% interanual, según el INE. El pan cuesta ya {price}, frente a "
                   "{old} hace un año, y la luz volvió a encarecerse."),
            "pt": ("Inflação sobe para {rate}%",
                   "Os preços ao consumidor subiram {rate}% em doze meses, informou o IBGE. O quilo do arroz custa "
                   "{price}, contra {old} há um ano."),
            "it": ("L'inflazione sale al {rate}%",
                   "I prezzi al consumo sono aumentati del {rate}% su base annua, comunica l'Istat. Il pane costa "
                   "ora {price}, contro {old} un anno fa."),
            "el": ("Στο {rate}% ο πληθωρισμός",
                   "Οι τιμές καταναλωτή αυξήθηκαν κατά {rate}% σε ετήσια βάση, ανακοίνωσε η ΕΛΣΤΑΤ. Το ψωμί κοστίζει "
                   "πλέον {price}, έναντι {old} πέρυσι."),
        },
        "earnings": {
            "en": ("{company} profit beats forecasts",
                   "{company} reported quarterly revenue of {amount} billion dollars, ahead of analyst estimates. "
                   "Its shares rose {rate}% to {price} in early trading, and the company raised its outlook."),
            "nl": ("{company} boekt hogere winst",
                   "{company} zag de omzet stijgen tot {amount} miljard euro. Het aandeel steeg {rate} procent "
                   "naar {price}. Het bedrijf verhoogde zijn verwachtingen."),
            "de": ("{company} übertrifft die Erwartungen",
                   "{company} steigerte den Umsatz auf {amount} Milliarden Euro. Die Aktie legte um {rate} Prozent "
                   "auf {price} zu; der Konzern hob seine Prognose an."),
            "fr": ("{company} dépasse les attentes",
                   "{company} a publié un chiffre d'affaires de {amount} milliards d'euros. L'action a gagné "
                   "{rate} % à {price} en début de séance."),
            "es": ("{company} supera las previsiones",
                   "{company} facturó {amount} millones de euros en el trimestre. Sus acciones subieron un {rate}% "
                   "hasta {price} en la apertura."),
            "pt": ("{company} supera as previsões",
                   "A {company} registrou receita de {amount} bilhões de reais no trimestre. As ações subiram "
                   "{rate}% para {price}."),
            "it": ("{company} batte le stime",
                   "{company} ha chiuso il trimestre con ricavi per {amount} miliardi di euro. Il titolo è salito "
                   "del {rate}% a {price} in apertura."),
            "el": ("Κέρδη πάνω από τις εκτιμήσεις για την {company}",
                   "Η {company} ανακοίνωσε έσοδα {amount} δισ. ευρώ στο τρίμηνο. Η μετοχή ανέβηκε {rate}% στα "
                   "{price}."),
        },
        "launch": {
            "en": ("{company} unveils the {car}, its cheapest electric car yet",
                   "{company} on Tuesday presented the {car}, an electric hatchback that will cost {price} when "
                   "it reaches dealers next spring. Analysts said the price could put pressure on rivals, and the "
                   "company plans to build it at its plant near {city}."),
            "nl": ("{company} presenteert de {car}",
                   "{company} toonde dinsdag de {car}, een elektrische auto die {price} gaat kosten als hij in "
                   "het voorjaar bij de dealers staat. Analisten verwachten prijsdruk op concurrenten."),
            "de": ("{company} stellt den {car} vor",
                   "{company} hat am Dienstag den {car} vorgestellt, ein Elektroauto, das ab dem Frühjahr {price} "
                   "kosten soll. Analysten erwarten Druck auf die Konkurrenz; gebaut wird er in {city}."),
            "fr": ("{company} dévoile la {car}",
                   "{company} a présenté mardi la {car}, une citadine électrique vendue {price} à son arrivée "
                   "au printemps. Les analystes y voient une menace pour la concurrence."),
            "es": ("{company} presenta el {car}",
                   "{company} presentó el martes el {car}, un eléctrico que costará {price} cuando llegue a los "
                   "concesionarios en primavera. Se fabricará en {city}."),
            "pt": ("{company} apresenta o {car}",
                   "A {company} apresentou nesta terça o {car}, um elétrico que custará {price} quando chegar às "
                   "concessionárias. Analistas esperam pressão sobre os rivais."),
            "it": ("{company} presenta la {car}",
                   "{company} ha presentato martedì la {car}, un'auto elettrica che costerà {price} quando arriverà "
                   "nei concessionari in primavera. Sarà prodotta a {city}."),
            "el": ("Η {company} παρουσιάζει το {car}",
                   "Η {company} παρουσίασε την Τρίτη το {car}, ένα ηλεκτρικό αυτοκίνητο που θα κοστίζει {price} "
                   "όταν φτάσει στις αντιπροσωπείες την άνοιξη."),
        },
        "retail": {
            "en": ("Shoppers spent {amount} billion dollars over Black Friday weekend",
                   "Online spending rose {rate}% from last year, an industry tracker said. Retailers offered "
                   "steep discounts, but analysts warned that household debt keeps rising and that many "
                   "shoppers bought less than a year ago."),
            "nl": ("Winkels zetten minder om tijdens Black Friday",
                   "Consumenten gaven {amount} miljard euro uit, {rate} procent minder dan vorig jaar. "
                   "Winkeliers klagen over de hoge kortingen die hun marges drukken."),
            "de": ("Händler ziehen gemischte Bilanz nach dem Black Friday",
                   "Der Handelsverband meldet Umsätze von {amount} Milliarden Euro, {rate} Prozent mehr als im "
                   "Vorjahr. Viele Händler klagen über sinkende Margen durch Rabattschlachten."),
            "fr": ("Le Black Friday déçoit les commerçants",
                   "Les ventes ont atteint {amount} milliards d'euros, en hausse de {rate} %. Les petits commerces "
                   "dénoncent une course aux remises qu'ils ne peuvent pas suivre."),
            "es": ("El comercio factura {amount} millones en el Black Friday",
                   "Las ventas crecieron un {rate}%, según la patronal. Los pequeños comercios critican la guerra "
                   "de descuentos de las grandes plataformas."),
            "pt": ("Black Friday movimenta {amount} bilhões de reais",
                   "O faturamento do varejo cresceu {rate}%, segundo a associação do setor. Especialistas alertam "
                   "para o endividamento das famílias."),
            "it": ("Black Friday, i consumi crescono del {rate}%",
                   "Gli italiani hanno speso {amount} miliardi di euro, secondo Confcommercio. I piccoli negozi "
                   "lamentano la concorrenza delle grandi piattaforme."),
            "el": ("Black Friday: αύξηση {rate}% στον τζίρο",
                   "Οι καταναλωτές ξόδεψαν {amount} δισ. ευρώ, σύμφωνα με τον εμπορικό σύλλογο. Οι μικροί "
                   "έμποροι διαμαρτύρονται για τις υπερβολικές εκπτώσεις."),
        },
    },
}
_SET_PRODUCTS = {
    "en": ["laptop", "air fryer", "robot vacuum", "smartwatch", "e-bike", "pair of headphones"],
    "nl": ["laptop", "airfryer", "robotstofzuiger", "smartwatch", "e-bike"],
    "de": ["Laptops", "Heißluftfritteusen", "Saugroboter", "Smartwatches", "E-Bikes"],
    "fr": ["ordinateurs portables", "friteuses sans huile", "aspirateurs robots", "montres connectées"],
    "es": ["portátiles", "freidoras de aire", "robots aspiradores", "relojes inteligentes"],
    "pt": ["notebook", "air fryer", "robô aspirador", "smartwatch", "celular"],
    "it": ["notebook", "friggitrici ad aria", "robot aspirapolvere", "smartwatch", "monopattini elettrici"],
    "el": ["λάπτοπ", "φριτέζες αέρος", "σκούπες ρομπότ", "smartwatch", "κινητά"],
}
_SET_COMPANIES = ["Vantor", "Helmark", "Ostrava Motors", "Quillon", "Marevia", "Toskar"]
_SET_CARS = ["E3", "Nova", "Spark 40", "Urbo", "Lina EV"]
_SET_CITIES = ["Turin", "Gdansk", "Valencia", "Leipzig", "Porto", "Thessaloniki"]
_SET_CURRENCY = {"en": "${:,.0f}", "pt": "R$ {:,.0f}"}  # others: euro, written after the number


def _set_price(lang: str, value: float) -> str:
    if lang in _SET_CURRENCY:
        text = _SET_CURRENCY[lang].format(value)
        return text.replace(",", ".") if lang == "pt" else text
    return f"{value:,.0f}".replace(",", ".") + " €"


def generate_commerce_set(n: int, seed: int = 0, *, languages: Sequence[str] = COMMERCE_LANGUAGES,
                          commerce_fraction: float = 0.5) -> list[dict[str, Any]]:
    """``n`` articles for the commerce classifier: commerce families and price-quoting news, labelled.

    Each record is a FluxusSource article with ``truth.is_commerce`` and ``truth.commerce_kind`` (the
    family, or the news kind), like :func:`generate`'s; :func:`strip_labels` removes them.
    """
    rng = np.random.default_rng(seed)
    writer = _Writer(rng)
    records: list[dict[str, Any]] = []
    for i in range(n):
        lang = writer.pick(list(languages))
        is_commerce = bool(rng.random() < commerce_fraction)
        kinds = _COMMERCE_SET["commerce" if is_commerce else "news"]
        kind = writer.pick(list(kinds))
        title_t, body_t = kinds[kind][lang]
        pct = int(rng.integers(15, 70))
        # Product prices for commerce and for a loaf of bread; a car's price for a launch.
        base = {"launch": float(rng.integers(25000, 60000)), "inflation": float(rng.integers(2, 9)),
                "earnings": float(rng.integers(20, 400))}.get(kind, float(rng.integers(19, 900)))
        slots = {"product": writer.pick(_SET_PRODUCTS[lang]), "brand": writer.pick(_BRANDS),
                 "price": _set_price(lang, base), "old": _set_price(lang, base / (1 - pct / 100)),
                 "pct": str(pct), "year": str(int(rng.integers(2024, 2027))), "n": str(int(rng.integers(5, 60))),
                 "code": f"{writer.pick(['SAVE', 'DEAL', 'PROMO', 'WINTER'])}{int(rng.integers(10, 99))}",
                 "company": writer.pick(_SET_COMPANIES), "car": writer.pick(_SET_CARS),
                 "city": writer.pick(_SET_CITIES), "amount": f"{float(rng.uniform(1.5, 90.0)):.1f}",
                 "rate": f"{float(rng.uniform(0.8, 7.5)):.1f}"}
        if lang != "en":
            slots["rate"], slots["amount"] = slots["rate"].replace(".", ","), slots["amount"].replace(".", ",")
        title, content = title_t.format(**slots), body_t.format(**slots)
        outlet = f"shop_{kind}" if is_commerce else f"news_{kind}"
        published = _EPOCH + timedelta(seconds=int(rng.integers(0, _MONTHS_SPAN_DAYS * 86400)))
        article_id = _article_id(seed, i, outlet)
        records.append({
            "id": article_id, "title": title, "content": content, "source": outlet, "source_type": "rss",
            "url": f"https://{outlet}.example/{article_id}", "published_date": published.isoformat(),
            "language": lang, "tags": ["shopping", kind] if is_commerce else [kind],
            "metadata": {"word_count": len(content.split()), "generator": "fluxscore.training.synth"},
            "truth": {"topic": "commerce" if is_commerce else kind, "is_commerce": is_commerce,
                      "commerce_kind": kind if is_commerce else None, "news_kind": None if is_commerce else kind,
                      "near_duplicate_of": None},
        })
    return records
